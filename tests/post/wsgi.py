# ruff: noqa  (the post's code as published, lint errors included)
# The post's wsgi.py, verbatim (step 6).
from gevent import monkey
monkey.patch_all()

from gevent.pywsgi import WSGIServer
from app import app

if __name__ == '__main__':
    http_server = WSGIServer(('0.0.0.0', 8000), app, handler_class=WebSocketHandler)
    http_server.serve_forever()
