# A worker for qslice's tests, built on the reference library. The message body says what to do:
#   ok | fail:<reason> | exception:<text> | retry:<delay> | die | garbage | sleep:<seconds> | print
# and "once:<command>" does the command the first time it sees the message id, then "ok".
# TEST_WORKER_MODE=exit|badversion|silent breaks the worker before it serves anything;
# TEST_WORKER_BROKEN_WHILE=<file>: while the file exists the worker writes garbage instead of ready;
# TEST_WORKER_MODE=pairs speaks the protocol itself and answers messages only two at a time (it
# waits for a second message before it answers the first: a worker qslice must not starve).
# TEST_WORKER_RECORD=<file>: one JSON line per message (its header fields, pid, lock present).
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.environ["QSLICE_WORKER_LIB"])
import qslice_worker as qw  # noqa: E402

mode = os.environ.get("TEST_WORKER_MODE", "")
if mode == "exit":
    sys.exit(3)
broken = os.environ.get("TEST_WORKER_BROKEN_WHILE", "")
if broken and os.path.exists(broken):  # a dependency that is down: fail the handshake
    os.write(1, b"cannot connect to the database\n")
    time.sleep(60)
out = os.dup(1)
os.dup2(2, 1)
if mode == "silent":
    time.sleep(60)
if mode == "badversion":
    os.read(0, 65536)
    h = b'{"type":"ready","version":99}'
    os.write(out, b"%d 0\n%s" % (len(h), h))
    time.sleep(60)
if mode == "pairs":
    inp = os.fdopen(0, "rb", buffering=0)

    def frame():
        line = b""
        while not line.endswith(b"\n"):
            c = inp.read(1)
            if not c:
                sys.exit(0)
            line += c
        hl, bl = (int(x) for x in line.split())
        data = b""
        while len(data) < hl + bl:
            data += inp.read(hl + bl - len(data))
        return json.loads(data[:hl])

    frame()  # hello
    h = b'{"type":"ready","version":1}'
    os.write(out, b"%d 0\n%s" % (len(h), h))
    while True:
        ids = [frame()["id"], frame()["id"]]
        a = b"".join(b'%d 0\n%s' % (len(x), x) for x in (b'{"type":"done","id":%d}' % i for i in ids))
        os.write(out, a)
state = os.environ.get("TEST_WORKER_STATE", "")
record = os.environ.get("TEST_WORKER_RECORD", "")
lockdir = os.environ.get("TEST_WORKER_LOCKDIR", "")


def handle(m):
    if record:
        rec = {k: getattr(m, k) for k in qw.Message.__slots__ if k != "body"}
        rec["pid"] = os.getpid()
        rec["body_len"] = len(m.body)
        rec["body_sha256"] = hashlib.sha256(m.body).hexdigest()
        rec["lock_held"] = bool(lockdir and m.lock and os.path.exists(os.path.join(lockdir, m.lock)))
        with open(record, "a") as f:
            f.write(json.dumps(rec) + "\n")
    cmd = m.body.decode("utf-8", "replace")
    if cmd.startswith("once:"):
        marker = os.path.join(state, m.message_id)
        if os.path.exists(marker):
            return
        open(marker, "w").close()
        cmd = cmd[5:]
    cmd, _, arg = cmd.partition(":")
    if cmd == "ok":
        return
    if cmd == "fail":
        raise qw.Fail(arg)
    if cmd == "exception":
        raise ValueError(arg)
    if cmd == "retry":
        raise qw.Retry("asked by the test", delay=float(arg) if arg else None)
    if cmd == "die":
        os._exit(7)
    if cmd == "garbage":
        os.write(out, b"hello world\n")
        time.sleep(10)
    if cmd == "sleep":
        time.sleep(float(arg))
        return
    if cmd == "spawnsleep":  # a child that outlives the worker unless its tree is killed
        pidfile = os.path.join(state, m.message_id + ".child")
        if os.path.exists(pidfile):  # a handling got as far as the child: done now
            return
        import subprocess
        child = subprocess.Popen(["sleep", "300"])
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(child.pid))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(30)
        return
    if cmd == "print":
        print("noise on stdout")
        return
    raise qw.Fail("unknown test command %r" % cmd)


qw.run(handle, out_fd=out)
