"""What each first rung (a step's minimal.py: the post's code made to run) still gets wrong.

Every test of the contract, bad-input and fault suites runs against the first rungs
too. Where a rung fails, the test is marked here as an expected failure, strict, with
the reason a reader should know: a rung that starts passing fails the run, so this
list stays true. tools/protections_table.py turns the results into docs/protections.md.
"""

NO_CHAT = "no /chat: the post has only the echo endpoint"
NO_HEALTH = "no /health: the post has none"
NO_ORIGIN_CHECK = "no Origin check: any web page can open a socket in its visitor's browser"
NO_CLIENT = "the client is not served: open client/index.html from disk"
PLAIN_GET_200 = "a plain GET gets the post's 200, not 426 Upgrade Required"
TEXT_ONLY = ("receive_text() raises on a binary message, uncaught: the client reads 1011 "
             "(internal error)")

# Failures both rungs share: what the post's app does not have at all.
COMMON = {
    "test_plain_get_answers_426_with_the_posts_text": PLAIN_GET_200,
    "test_health_answers_ok": NO_HEALTH,
    "test_serves_the_client": NO_CLIENT,
    "test_chat_welcomes_a_client_with_its_id": NO_CHAT,
    "test_chat_among_three_clients_with_a_leave": NO_CHAT,
    "test_chat_keeps_each_senders_order": NO_CHAT,
    "test_chat_answers_an_empty_message_with_an_error": NO_CHAT,
    "test_chat_closes_a_binary_message_with_1003": NO_CHAT,
    "test_chat_closes_a_message_over_64_kib_with_1009": NO_CHAT,
    "test_chat_closing_a_client_that_is_already_gone_is_quiet": NO_CHAT,
    "test_chat_answers_a_text_over_2000_characters_with_an_error": NO_CHAT,
    "test_chat_accepts_a_text_of_exactly_2000_characters": NO_CHAT,
    "test_chat_answers_a_message_of_exactly_64_kib_with_an_error_not_a_close": NO_CHAT,
    "test_refuses_a_foreign_origin_on_chat_with_403": NO_CHAT,
    "test_allowed_origins_takes_several_patterns_and_globs": NO_ORIGIN_CHECK,
    "test_a_client_that_stops_reading_does_not_stall_the_chat": NO_CHAT,
    "test_churn_leaves_an_empty_room_and_bounded_memory": NO_CHAT,
    "test_a_dropped_chat_client_is_closed_when_it_reads_again": NO_CHAT,
    "test_a_dropped_chat_client_paused_past_the_ping_timeout_is_closed": NO_CHAT,
    "test_refuses_a_foreign_origin_with_403": NO_ORIGIN_CHECK,
    "test_allowed_origins_replaces_the_default_origins": NO_ORIGIN_CHECK,
}

LACKS = {
    "step02-minimal": {
        **COMMON,
        "test_client_close_is_answered_with_1000":
            "stock gevent-websocket answers a close without its code (the client reads 1005)",
        "test_echo_closes_a_message_over_16_mib_with_1009":
            "stock gevent-websocket has no size limit: it reads and echoes any message",
        "test_closes_a_1_gib_frame_header_with_1009_without_growing":
            "no size limit: a header announcing 1 GiB is believed, and the server waits for it",
        "test_closes_invalid_utf8_text_with_1007":
            "stock gevent-websocket closes without a code",
        "test_closes_a_protocol_error_with_1002":
            "stock gevent-websocket closes a protocol error without a code",
        "test_sigterm_closes_every_client_with_1001_and_exits_cleanly":
            "SIGTERM ends the process at once: clients get no close frame",
        "test_ctrl_c_stops_the_server_without_a_traceback":
            "Ctrl+C ends the process at once: no close frame, a KeyboardInterrupt traceback",
        "test_shutdown_does_not_wait_for_a_client_that_stops_reading":
            "SIGTERM ends the process at once: clients get no close frame",
        "test_a_silent_peer_is_dropped_after_the_ping_timeout":
            "gevent-websocket never pings: a peer that vanished stays connected forever",
        "test_passes_autobahn_framing_fragmentation_and_close_cases":
            "stock gevent-websocket fails Autobahn 7.3.4 and 7.3.5: close codes and reasons",
    },
    "step03-minimal": {
        **COMMON,
        "test_echoes_binary": TEXT_ONLY,
        "test_echoes_a_one_mebibyte_message": TEXT_ONLY,
        "test_sigterm_closes_every_client_with_1001_and_exits_cleanly":
            "uvicorn says 1012 (service restart) at shutdown, not 1001 (going away)",
        "test_ctrl_c_stops_the_server_without_a_traceback":
            "uvicorn says 1012 (service restart) at shutdown, not 1001 (going away)",
        "test_shutdown_does_not_wait_for_a_client_that_stops_reading":
            "uvicorn says 1012 (service restart) at shutdown, not 1001 (going away)",
        "test_a_silent_peer_is_dropped_after_the_ping_timeout":
            "uvicorn's default pings (20 s, then 20 s for the pong); PING_INTERVAL is not read",
        "test_the_handshake_declines_compression":
            "uvicorn.run() accepts permessage-deflate on every route: a 250 KiB frame makes "
            "it inflate 16 MiB",
    },
}


# step04's first rung relays chat messages through Redis and nothing more: its chat
# has no welcome, join or leave events, so every chat test fails at its first step.
RELAY_ONLY = "a relay only: no welcome, join or leave events, no /health to count the room"
LACKS["step04-minimal"] = {
    **{test: RELAY_ONLY if reason == NO_CHAT else reason
       for test, reason in LACKS["step03-minimal"].items()},
}


# step05's first rung is step04's on a Redis stream, each client reading it from its last
# id: the same relay, without welcome, join or leave events, so the same tests fail.
LACKS["step05-minimal"] = dict(LACKS["step04-minimal"])
