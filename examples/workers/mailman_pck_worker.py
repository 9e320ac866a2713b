#!/usr/bin/python3
"""Mailman's archive runner, ported to a qslice persistent worker.

Mailman 3 writes each queue entry as a .pck file: two pickles, the message and its metadata
(msgdata), e.g. {"listid": "test.example.com", "version": 3}. Its runners loop over a queue
directory; with qslice, qslice owns the loop (slices, failover, retries, shunting, metrics) and
this worker only does what the runner's _dispose() did. Configure the queue with `payload: raw`
so the .pck files Mailman wrote reach the worker byte for byte (examples/qslice-worker.yaml):

    handler:
      worker: [/usr/bin/python3, /usr/local/lib/qslice/mailman_pck_worker.py]
      payload: raw
      env: {ARCHIVE_DIR: /var/lib/mailman3/archives/qslice, QSLICE_WORKER_LIB: /usr/local/lib/qslice}

What it does is Mailman's "prototype" archiver: each message goes into a Maildir per list,
ARCHIVE_DIR/<list id>/. The file name is qslice's message id, so handling a message twice (after a
crash, at least once) leaves one copy: the write is idempotent.

Porting another runner is the same shape: unpickle, look the list up, do _dispose's work, then
return (done), raise qslice_worker.Retry (Mailman's "return True": try again later) or
qslice_worker.Fail (Mailman's shunt).
"""

import email
import email.message
import io
import os
import pickle
import socket
import sys
import time

sys.path.insert(0, os.environ.get("QSLICE_WORKER_LIB", os.path.dirname(os.path.abspath(__file__))))
import qslice_worker  # noqa: E402

ARCHIVE_DIR = os.environ.get("ARCHIVE_DIR", "/var/lib/mailman3/archives/qslice")


class QueueUnpickler(pickle.Unpickler):
    """Loads only what Mailman puts in queue files: messages and plain data.

    A pickle can name any class; refusing everything but the email classes keeps a forged queue
    file from running code. Mailman's own Message subclass maps to the stdlib one when Mailman is
    not installed where the worker runs.
    """

    def find_class(self, module, name):
        if module == "mailman.email.message" and name == "Message":
            try:
                from mailman.email.message import Message
                return Message
            except ImportError:
                return email.message.Message
        if module.startswith("email.") or module == "copyreg" or (module == "builtins" and name in ("set", "frozenset")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError("queue file names %s.%s, which a Mailman queue entry never does" % (module, name))


def load(body):
    """Returns (msg, msgdata) from a Mailman .pck file, as Switchboard.dequeue() does."""
    fp = io.BytesIO(body)
    msg = QueueUnpickler(fp).load()
    data = QueueUnpickler(fp).load()
    if data.get("_parsemsg"):
        msg = email.message_from_string(msg)
    return msg, data


def archive(list_id, key, msg):
    """Adds msg to the list's Maildir under the name key (tmp/ then rename into new/, as Maildir
    requires); a second call with the same key replaces the first copy."""
    if not list_id or "/" in list_id or list_id.startswith("."):
        raise qslice_worker.Fail("msgdata has no usable listid: %r" % (list_id,))
    box = os.path.join(ARCHIVE_DIR, list_id)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(box, sub), exist_ok=True)
    tmp = os.path.join(box, "tmp", "%s.%s" % (key, socket.gethostname()))
    with open(tmp, "wb") as f:
        f.write(msg.as_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(box, "new", key))


def handle(m):
    try:
        msg, data = load(m.body)
    except Exception as e:  # not a Mailman queue entry: retrying will not help
        raise qslice_worker.Fail("not a Mailman queue file: %s: %s" % (type(e).__name__, e))
    # What Mailman's ArchiveRunner adds before archiving.
    if msg.get("X-Mailman-Archived-At") is None:
        msg["X-Mailman-Archived-At"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    try:
        archive(data.get("listid", ""), m.message_id, msg)
    except OSError as e:  # a full or unreachable disk passes
        raise qslice_worker.Retry("archive: %s" % e, delay=30)


if __name__ == "__main__":
    qslice_worker.run(handle)
