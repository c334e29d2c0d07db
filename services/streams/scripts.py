"""Lua scripts for multi-key or check-then-write updates. Every key arrives through KEYS[]."""

from __future__ import annotations

CLAIM_MESSAGE = """
-- KEYS[1] = msg dedupe key, KEYS[2] = stream meta, KEYS[3] = stream text, KEYS[4] = stream owner,
-- KEYS[5] = the conversation's ticket queue (optional: only for messages that will call Dify)
-- ARGV[1] = new stream id, ARGV[2] = dedupe ttl (s), ARGV[3] = stream ttl (s), ARGV[4] = now (ms)
-- ARGV[5] = owner token, ARGV[6] = owner lease (ms), ARGV[7..] = extra meta field/value pairs
-- Taking a ticket here, in the callback, makes messages of one conversation run in arrival order.
-- Returns {1, sid, 1 if first in its queue} for the first delivery, {0, existing sid, 1 if that one is
-- first in its queue} for a re-delivery; a replay after a lost reply thus still learns its turn.
local existing = redis.call('GET', KEYS[1])
if existing then
  if KEYS[5] and redis.call('LINDEX', KEYS[5], 0) == existing then return {0, existing, 1} end
  return {0, existing, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6])
local meta = {'status', 'queued', 'seq', 0, 'created', ARGV[4], 'updated', ARGV[4]}
for i = 7, #ARGV do meta[#meta + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(meta))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], '', 'EX', ARGV[3])
local first = 0
if KEYS[5] then
  redis.call('RPUSH', KEYS[5], ARGV[1])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  if redis.call('LINDEX', KEYS[5], 0) == ARGV[1] then first = 1 end
end
return {1, ARGV[1], first}
"""

QUEUE_TURN = """
-- KEYS[1] = a conversation's ticket queue, KEYS[2] = meta and KEYS[3] = owner lease of the stream the
-- caller saw at its head; ARGV[1] = that head's sid, ARGV[2] = the caller's sid, ARGV[3] = ttl (s)
-- A head whose stream is gone or whose owner let go (finished, or its replica died and the lease
-- lapsed) is removed. Returns 1 when the caller is at the head now, 0 when it must wait, and -1 when
-- the head changed since the caller looked (look again). A caller missing from the queue (Redis lost
-- it) queues again at the back.
local head = redis.call('LINDEX', KEYS[1], 0)
if head == ARGV[2] then return 1 end
if head and head ~= ARGV[1] then return -1 end
if head and (redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 0) then
  redis.call('LPOP', KEYS[1])
  head = redis.call('LINDEX', KEYS[1], 0)
  if head == ARGV[2] then return 1 end
  if head then return -1 end
end
if not redis.call('LPOS', KEYS[1], ARGV[2]) then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  if not head then return 1 end
end
return 0
"""

WRITE_TEXT = """
-- KEYS[1] = stream meta, KEYS[2] = stream text
-- ARGV[1] = seq of this write, ARGV[2] = 'append' | 'replace', ARGV[3] = text, ARGV[4] = now (ms)
-- Applies the write only if it is the next in sequence, so a replayed command changes nothing. A
-- replace carries the whole text, so it may skip numbers: the writer sends one after a gap (a
-- promoted replica that missed the last writes of the master it replaced).
-- Returns 1 applied, 0 already applied (replay), -1 stream missing/expired, -2 finished, -3 gap.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local want = tonumber(ARGV[1])
if want <= seq then return 0 end
if status == 'done' or status == 'failed' or status == 'interrupted' then return -2 end
if want ~= seq + 1 and ARGV[2] ~= 'replace' then return -3 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if ARGV[2] == 'replace' then
  redis.call('SET', KEYS[2], ARGV[3], 'KEEPTTL')
else
  redis.call('APPEND', KEYS[2], ARGV[3])
end
redis.call('HSET', KEYS[1], 'seq', want, 'updated', ARGV[4])
return 1
"""

SET_STATUS = """
-- KEYS[1] = stream meta
-- ARGV[1] = new status, ARGV[2] = now (ms), ARGV[3] = note ('' keeps none), ARGV[4] = a token unique
-- to this call, ARGV[5] = the writes the caller made ('' for no check). Moves a live stream to another
-- live or terminal status; a finished stream never changes. Returns 1 changed, 0 already finished,
-- -1 missing, -3 the stream holds fewer writes than the caller made (a failover lost the last ones:
-- the caller writes the whole text again first). A replay of the call that finished the stream
-- (redis-py re-runs a command whose reply was lost) is recognised by its token: 1 again.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'done' or status == 'failed' or status == 'interrupted' then
  if redis.call('HGET', KEYS[1], 'op') == ARGV[4] then return 1 end
  return 0
end
if ARGV[5] and ARGV[5] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'seq')) < tonumber(ARGV[5]) then
  return -3
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated', ARGV[2], 'note', ARGV[3], 'op', ARGV[4])
return 1
"""

RENEW_OWNERS = """
-- KEYS = stream owner lease and stream meta, in pairs; ARGV[1] = owner token, ARGV[2] = lease (ms)
-- Extends every listed owner lease of the caller, in one call, and reports each stream:
-- 1 held and live, 2 held but finished by someone else (e.g. /stop), 0 no longer ours.
-- A lease that lapsed while Redis (or the caller) stalled is taken again if the stream is still
-- live: nobody else ever owns it, and a poll that found it lapsed has finished the stream instead.
local out = {}
for i = 1, #KEYS, 2 do
  local state = 0
  local status = redis.call('HGET', KEYS[i + 1], 'status')
  local owner = redis.call('GET', KEYS[i])
  if status and (owner == ARGV[1] or not owner) then
    if status == 'done' or status == 'failed' or status == 'interrupted' then
      state = owner and 2 or 0
    else
      state = 1
    end
    if owner or state == 1 then redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
  end
  out[#out + 1] = state
end
return out
"""

RELEASE_LEASE = """
-- KEYS[1] = lease key; ARGV[1] = owner token. Deletes the lease only if the caller owns it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SET_FIELDS = """
-- KEYS[1] = stream meta; ARGV = field/value pairs.
-- Sets fields only while the stream exists, so an expired stream is never recreated without a TTL.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

SET_PROGRESS = """
-- KEYS[1] = stream meta; ARGV[1] = the progress note.
-- Sets the note of a live stream only: a finished one keeps the note its answer ended with.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'done' or status == 'failed' or status == 'interrupted' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return 1
"""

PUT_IMAGES = """
-- KEYS[1] = stream meta, KEYS[2] = the stream's images; ARGV[1] = msg_item JSON, ARGV[2] = how many,
-- ARGV[3] = the images as markdown links, ARGV[4] = the images' TTL (ms).
-- Keeps the images for the last frame of an answer still running and not closed early (a closed
-- stream's last frame is fixed; a finished one was stopped or interrupted). Returns 1 if kept, 2 if
-- the stream cannot show them any more, 0 if it is gone; never recreates an expired stream.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
local ended = status == 'done' or status == 'failed' or status == 'interrupted'
if ended or redis.call('HEXISTS', KEYS[1], 'final') == 1 then return 2 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'images', ARGV[2], 'image_links', ARGV[3])
return 1
"""

CLOSE_STREAM = """
-- KEYS[1] = stream meta
-- ARGV[1] = reason ('window' | 'overflow'), ARGV[2] = final frame content, ARGV[3] = characters of
-- the answer that content shows, ARGV[4] = now (ms), ARGV[5] = '1' if a finished answer may be closed
-- Fixes the last frame WeCom will see; the first close wins and later calls get its values. A poll
-- closes only a live answer: if the answer finished meanwhile it gets {2} and must decide again
-- (otherwise it could promise a follow-up the finished answer already decided not to send).
-- Returns {1 | 0, final, shown, reason}, {2} (finished, not closed), or {-1} when the stream is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local final = redis.call('HGET', KEYS[1], 'final')
if final then
  return {0, final, redis.call('HGET', KEYS[1], 'shown'), redis.call('HGET', KEYS[1], 'closed')}
end
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[5] ~= '1' and (status == 'done' or status == 'failed' or status == 'interrupted') then return {2} end
redis.call('HSET', KEYS[1], 'closed', ARGV[1], 'final', ARGV[2], 'shown', ARGV[3], 'closed_at', ARGV[4])
return {1, ARGV[2], ARGV[3], ARGV[1]}
"""

INTERRUPT_ORPHAN = """
-- KEYS[1] = stream meta, KEYS[2] = stream owner; ARGV[1] = now (ms), ARGV[2] = note
-- Finishes a live stream as interrupted only if no worker holds its owner lease any more.
-- Returns 1 interrupted now, 0 owner alive or already finished, -1 missing.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'done' or status == 'failed' or status == 'interrupted' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'interrupted', 'note', ARGV[2], 'updated', ARGV[1])
return 1
"""


MARK_DELIVERED = """
-- KEYS[1] = stream meta; ARGV[1] = a token unique to this claim
-- Claims the one response_url delivery of a stream. 1 = claimed now (or by this very claim, when
-- redis-py replays it after a lost reply), 0 = claimed before or gone (HSETNX alone would
-- recreate an expired hash without a TTL).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'delivered', ARGV[1]) == 1 then return 1 end
if redis.call('HGET', KEYS[1], 'delivered') == ARGV[1] then return 1 end
return 0
"""
