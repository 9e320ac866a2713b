"""qslice persistent worker library: protocol version 1 (docs/worker-protocol.md).

One file, standard library only, Python 3.9+. Copy it next to your worker, or put it on PYTHONPATH.

    import qslice_worker

    def handle(msg):
        deliver(msg.body)                                  # bytes of the message
        # return normally: done, the file is removed
        # raise qslice_worker.Retry("smtp busy", delay=30) # try again later
        # raise qslice_worker.Fail("no such list")          # shunt it with this reason
        # any other exception: failed (shunted) with its type and text; traceback on stderr

    qslice_worker.run(handle)

qslice starts the worker with the protocol on stdin and stdout. run() moves file descriptor 1 to
stderr first, so print() and libraries that write to stdout cannot corrupt the protocol: what they
write ends up in qslice's log, like stderr. Messages are handled one at a time, in the order they
arrive; answers are written when no further message is waiting to be read, so qslice can keep
several messages in flight (pipelining) without a write per message.
"""

import json
import os
import sys
import traceback

PROTOCOL_VERSION = 1

__all__ = ["Message", "Retry", "Fail", "run", "ProtocolError", "PROTOCOL_VERSION"]


class Message:
    """One message: the metadata an exec handler gets in its environment, and the body."""

    __slots__ = ("id", "queue", "slice", "slices", "message_id", "enqueued", "attempts", "retry",
                 "lock", "lease_deadline", "fencing_token", "traceparent", "meta", "body")

    def __init__(self, h, body):
        self.id = h["id"]
        self.queue = h.get("queue", "")                 # QSLICE_QUEUE
        self.slice = h.get("slice", 0)                  # QSLICE_SLICE
        self.slices = h.get("slices", 0)                # QSLICE_SLICES
        self.message_id = h.get("message_id", "")       # QSLICE_MESSAGE_ID: the file's base name
        self.enqueued = h.get("enqueued", "")           # QSLICE_ENQUEUED, RFC 3339
        self.attempts = h.get("attempts", 0)            # QSLICE_ATTEMPTS: crash recoveries so far
        self.retry = h.get("retry", 0)                  # QSLICE_RETRY: retries asked so far
        self.lock = h.get("lock", "")                   # QSLICE_LOCK
        self.lease_deadline = h.get("lease_deadline", "")  # QSLICE_LEASE_DEADLINE: commit only before it
        self.fencing_token = h.get("fencing_token", 0)  # QSLICE_FENCING_TOKEN (Consul mode)
        self.traceparent = h.get("traceparent", "")     # TRACEPARENT (W3C) of this handling's span
        self.meta = h.get("meta") or {}                 # QSLICE_META_<KEY>, keys as stored
        self.body = body


class Retry(Exception):
    """Raise to have the message tried again later; delay in seconds (None: qslice's backoff)."""

    def __init__(self, reason="", delay=None):
        super().__init__(reason)
        self.reason = str(reason)
        self.delay = delay


class Fail(Exception):
    """Raise to fail the message for good: qslice moves it to the shunt queue with the reason."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = str(reason)


class ProtocolError(Exception):
    """qslice sent something this library does not understand."""


def _frame(header):
    return b"%d 0\n%s" % (len(header), header)


def _answer(msg_id, exc):
    if exc is None:
        return _frame(b'{"type":"done","id":%d}' % msg_id)
    if isinstance(exc, Retry):
        a = {"type": "retry", "id": msg_id, "reason": exc.reason}
        if exc.delay is not None:
            a["delay"] = float(exc.delay)
    elif isinstance(exc, Fail):
        a = {"type": "fail", "id": msg_id, "reason": exc.reason}
    else:
        a = {"type": "fail", "id": msg_id, "reason": "%s: %s" % (type(exc).__name__, exc)}
    return _frame(json.dumps(a).encode())


_BUF = 1 << 16  # the input buffer: most frames fit; a larger one grows it


def run(handle, max_in_flight=None, in_fd=0, out_fd=None):
    """Serve messages until qslice closes stdin; handle(msg) is called for each one.

    max_in_flight lowers how many messages qslice sends ahead of the answers (default: as qslice
    offers). Returns normally at the end of input; raises ProtocolError on garbage.
    """
    if out_fd is None:
        out_fd = os.dup(1)
        sys.stdout.flush()
        os.dup2(2, 1)
    # Input is read into one reused buffer (os.readv: no allocation per read); complete frames
    # are parsed from it in place. start..end is what has been read and not parsed yet.
    buf = bytearray(_BUF)
    view = memoryview(buf)
    start = end = 0
    need = 0  # bytes the frame at start needs, once its header line is known
    out = []
    ready = False
    decoder = json.JSONDecoder()
    scan, decode = decoder.scan_once, decoder.decode
    readv, write = os.readv, os.write

    while True:
        # Parse every complete frame in the buffer.
        while True:
            nl = buf.find(b"\n", start, end)
            if nl < 0:
                if end - start > 64:
                    raise ProtocolError("frame header line too long: %r" % bytes(view[start:start + 64]))
                break
            hl, sp, bl = bytes(view[start:nl]).partition(b" ")
            if not (hl.isdigit() and bl.isdigit()):
                raise ProtocolError("bad frame header line %r" % bytes(view[start:nl]))
            hstart = nl + 1
            bstart = hstart + int(hl)
            stop = bstart + int(bl)
            if stop > end:
                need = stop - start
                break
            try:
                text = str(view[hstart:bstart], "utf-8")
                try:  # the JSON scanner alone: qslice writes no whitespace around a header
                    header, hend = scan(text, 0)
                except StopIteration:
                    hend = -1
                if hend != len(text):
                    header = decode(text)  # the whole decoder: whitespace, or the error named
            except ValueError as e:
                raise ProtocolError("bad frame header %r: %s" % (bytes(view[hstart:bstart][:80]), e)) from None
            if type(header) is not dict:
                raise ProtocolError("frame header %r is not a JSON object" % bytes(view[hstart:bstart][:80]))
            body = bytes(view[bstart:stop])
            start = stop
            kind = header.get("type")
            if kind == "message":
                if not ready:
                    raise ProtocolError("message before hello")
                msg = Message(header, body)
                try:
                    handle(msg)
                    out.append(_frame(b'{"type":"done","id":%d}' % msg.id))
                except (Retry, Fail) as e:
                    out.append(_answer(msg.id, e))
                except Exception as e:  # a failed message, not a dead worker
                    traceback.print_exc(file=sys.stderr)
                    out.append(_answer(msg.id, e))
            elif kind == "hello" and not ready:
                if PROTOCOL_VERSION not in header.get("versions", ()):
                    raise ProtocolError("expected hello offering version %d, got %r" % (PROTOCOL_VERSION, header))
                r = {"type": "ready", "version": PROTOCOL_VERSION}
                if max_in_flight:
                    r["max_in_flight"] = int(max_in_flight)
                out.append(_frame(json.dumps(r).encode()))
                ready = True
            else:
                raise ProtocolError("unexpected frame type %r" % (kind,))
        # Nothing complete left to handle: answer, then wait for more.
        if out:
            data = b"".join(out)
            out.clear()
            n = write(out_fd, data)
            while n < len(data):
                data = data[n:]
                n = write(out_fd, data)
        # Make room: move the unparsed rest to the front, or into a larger buffer for a big frame.
        if start == end:
            start = end = 0
        if start + need > len(buf) or len(buf) - end < 4096:
            rest = view[start:end].tobytes()
            if need > len(buf):
                view.release()
                buf = bytearray(need)
                view = memoryview(buf)
            buf[:len(rest)] = rest
            start, end = 0, len(rest)
        need = 0
        got = readv(in_fd, [view[end:]])
        if not got:
            if end > start:
                raise ProtocolError("input ended in the middle of a frame")
            return
        end += got


if __name__ == "__main__":
    # A no-op worker: every message is done. Useful to measure qslice's own cost.
    run(lambda msg: None)
