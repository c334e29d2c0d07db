"""The key names of KEY_LAYOUT 2, pinned: a change to any of them must raise KEY_LAYOUT (README "Upgrades")."""

from __future__ import annotations

from services.streams.keys import KEY_LAYOUT, Keys, group_of

SID = "0123abcd" + "e" * 24
SCOPE = "user:zhangsan"

# name → (one server and Sentinel: exactly layout 1's names, Redis Cluster)
LAYOUT_2 = {
    "msg": ("p:msg:m1", "p:msg:{0123abcd}m1"),
    "stream_meta": (f"p:stream:{SID}:meta", "p:stream:{0123abcd}" + "e" * 24 + ":meta"),
    "stream_text": (f"p:stream:{SID}:text", "p:stream:{0123abcd}" + "e" * 24 + ":text"),
    "stream_owner": (f"p:stream:{SID}:owner", "p:stream:{0123abcd}" + "e" * 24 + ":owner"),
    "stream_images": (f"p:stream:{SID}:images", "p:stream:{0123abcd}" + "e" * 24 + ":images"),
    "queue": (f"p:queue:{SCOPE}", f"p:queue:{{{group_of(SCOPE)}}}{SCOPE}"),
    "active": (f"p:active:{SCOPE}", f"p:active:{SCOPE}"),
    "conversation": (f"p:conv:{SCOPE}", f"p:conv:{SCOPE}"),
    "feedback": (f"p:feedback:{SID}", f"p:feedback:{SID}"),
    "card": ("p:card:q1", "p:card:q1"),
    "dify_parameters": ("p:dify:parameters", "p:dify:parameters"),
    "auth_unknown": ("p:auth:unknown:u1", "p:auth:unknown:u1"),
    "auth_lock": ("p:auth:lock:u1", "p:auth:lock:u1"),
    "auth_wechatid": ("authorization:wechatid:u1", "authorization:wechatid:u1"),
    "auth_token": ("authorization:token:t1", "authorization:token:t1"),
    "ws_holder": ("p:ws:holder:aib1", "p:ws:holder:{aib1}"),
    "ws_fence": ("p:ws:fence:aib1", "p:ws:fence:{aib1}"),
    "ws_streams": ("p:ws:streams:aib1", "p:ws:streams:{aib1}"),
    "ws_refused": ("p:ws:refused:aib1", "p:ws:refused:{aib1}"),
    "ws_outbox": ("p:ws:outbox:aib1", "p:ws:outbox:{aib1}"),
    "ws_inbox": ("p:ws:inbox:aib1", "p:ws:inbox:{aib1}"),
    "records": ("p:records", "p:records"),
    "records_purge": ("p:records:purge", "p:records:purge"),
    "webhook_events": ("p:webhooks:dfe2f28c4f7a", "p:webhooks:dfe2f28c4f7a"),
}
ARGS = {"msg": ("m1", SID), "queue": (SCOPE,), "active": (SCOPE,), "conversation": (SCOPE,), "card": ("q1",),
        "dify_parameters": (), "records": (), "records_purge": (), "auth_unknown": ("u1",),
        "webhook_events": ("https://n8n.example.com/webhook/x",),
        "auth_lock": ("u1",), "auth_wechatid": ("u1",), "auth_token": ("t1",)}


def test_every_key_name_is_pinned_for_both_deployments() -> None:
    assert KEY_LAYOUT == 2
    methods = {name for name in vars(Keys) if not name.startswith("_") and callable(getattr(Keys, name))}
    assert methods - {"for_bot", "slot_batches"} == set(LAYOUT_2)  # a new key gets a row here
    for cluster, index in ((False, 0), (True, 1)):
        keys = Keys("p:", cluster=cluster)
        for name, names in LAYOUT_2.items():
            args = ARGS.get(name, ("aib1",) if name.startswith("ws_") else (SID,))
            assert getattr(keys, name)(*args) == names[index], (name, cluster)


def test_a_claim_without_its_stream_and_a_layout_1_stream_id_keep_layout_1_names() -> None:
    keys = Keys("p:", cluster=True)
    assert keys.msg("m1") == "p:msg:m1"  # a feedback event's mark: a single key needs no tag
    assert Keys("p:").stream_meta("f" * 32) == f"p:stream:{'f' * 32}:meta"
