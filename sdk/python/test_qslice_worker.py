"""Unit tests of qslice_worker's framing: python3 -m unittest test_qslice_worker (in sdk/python).

The library is fed through a real pipe, in chunks of every size (a frame split anywhere, many
frames in one read, frames larger than its buffer), and must hand every message over whole, answer
each one exactly once, and name what is wrong with bad input. sdk/e2e_test.go runs this file; the
library under the real qslice binary is tested there too.
"""

import json
import os
import random
import threading
import unittest

import qslice_worker as qw

HELLO = {"type": "hello", "client": "qslice", "versions": [1], "queue": "in", "worker": 0, "max_in_flight": 16}


def frame(header, body=b""):
    h = json.dumps(header).encode()
    return b"%d %d\n%s%s" % (len(h), len(body), h, body)


def message(i, body, **extra):
    h = {"type": "message", "id": i, "queue": "in", "slice": 1, "slices": 4, "message_id": "m%d" % i,
         "enqueued": "2023-11-14T22:13:20Z", "attempts": 0, "retry": 0, "lock": ""}
    h.update(extra)
    return frame(h, body)


def serve(data, handle, chunks, max_in_flight=None):
    """Runs the library on a pipe fed with data in the given chunk sizes (cycled); returns the
    answer frames as headers, and the exception run raised (or None)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    answers = bytearray()

    def feed():
        i, k = 0, 0
        while i < len(data):
            n = chunks[k % len(chunks)]
            os.write(in_w, data[i:i + n])
            i, k = i + n, k + 1
        os.close(in_w)

    def collect():
        while True:
            b = os.read(out_r, 1 << 16)
            if not b:
                return
            answers.extend(b)

    threads = [threading.Thread(target=feed), threading.Thread(target=collect)]
    for t in threads:
        t.start()
    err = None
    try:
        qw.run(handle, max_in_flight=max_in_flight, in_fd=in_r, out_fd=out_w)
    except Exception as e:  # the test looks at it
        err = e
        os.close(in_r)  # a feeder blocked on a full pipe gets EPIPE
        in_r = None
    os.close(out_w)
    for t in threads:
        t.join(timeout=30)
    if in_r is not None:
        os.close(in_r)
    os.close(out_r)
    out, pos = [], 0
    while pos < len(answers):
        nl = answers.index(b"\n", pos)
        hl, bl = (int(x) for x in answers[pos:nl].split())
        if bl != 0:
            raise AssertionError("an answer with a body")
        out.append(json.loads(answers[nl + 1:nl + 1 + hl]))
        pos = nl + 1 + hl
    return out, err


class Framing(unittest.TestCase):
    def test_every_split_and_size(self):
        rnd = random.Random(13)
        sizes = [0, 1, 63, 64, 4095, 4096, 65535, 65536, 65537, 300000, 2 << 20]
        bodies = {}
        data = frame(HELLO)
        for i in range(1, 45):
            body = bytes(rnd.getrandbits(8) for _ in range(min(sizes[i % len(sizes)], 256)))
            body = (body * (sizes[i % len(sizes)] // max(len(body), 1) + 1))[:sizes[i % len(sizes)]]
            bodies[i] = body
            data += message(i, body, meta={"n": str(i)})
        for chunks in ([1], [7, 1, 300], [len(data)], [4096], [65536, 3]):
            with self.subTest(chunks=chunks):
                got = {}

                def handle(m):
                    self.assertEqual(m.meta, {"n": str(m.id)})
                    self.assertEqual(m.message_id, "m%d" % m.id)
                    got[m.id] = m.body

                answers, err = serve(data, handle, chunks if chunks != [1] else [1] * 10 + [5000])
                self.assertIsNone(err)
                self.assertEqual(answers[0], {"type": "ready", "version": 1})
                self.assertEqual([a["id"] for a in answers[1:]], list(range(1, 45)))
                self.assertTrue(all(a["type"] == "done" for a in answers[1:]))
                self.assertEqual(got, bodies)

    def test_answers(self):
        data = frame(HELLO) + message(1, b"ok") + message(2, b"retry") + message(3, b"fail") + message(4, b"boom")

        def handle(m):
            if m.body == b"retry":
                raise qw.Retry("busy", delay=30)
            if m.body == b"fail":
                raise qw.Fail("no such list")
            if m.body == b"boom":
                raise ValueError("bad")

        answers, err = serve(data, handle, [len(data)], max_in_flight=1)
        self.assertIsNone(err)
        self.assertEqual(answers, [
            {"type": "ready", "version": 1, "max_in_flight": 1},
            {"type": "done", "id": 1},
            {"type": "retry", "id": 2, "reason": "busy", "delay": 30.0},
            {"type": "fail", "id": 3, "reason": "no such list"},
            {"type": "fail", "id": 4, "reason": "ValueError: bad"},
        ])

    def test_header_with_whitespace(self):
        h = b' \n{"type": "message", "id": 5, "message_id": "m5"}\t '
        data = frame(HELLO) + b"%d 2\n%sok" % (len(h), h)
        got = []
        answers, err = serve(data, lambda m: got.append((m.id, m.message_id, m.body)), [len(data)])
        self.assertIsNone(err)
        self.assertEqual(got, [(5, "m5", b"ok")])
        self.assertEqual(answers[1:], [{"type": "done", "id": 5}])

    def test_bad_input_is_named(self):
        cases = {
            "bad frame header line": frame(HELLO) + b"12 x\n",
            "frame header line too long": frame(HELLO) + b"1" * 100,
            "middle of a frame": frame(HELLO) + message(1, b"ok")[:-1],
            "not a JSON object": frame(HELLO) + b"2 0\n[]",
            "bad frame header": frame(HELLO) + b"3 0\n{x}",
            "Extra data": frame(HELLO) + b'11 0\n{"type":1}x',
            "message before hello": message(1, b"ok"),
            "expected hello": frame({"type": "hello", "versions": [2]}),
            "unexpected frame type": frame(HELLO) + frame({"type": "bye"}),
        }
        for want, data in cases.items():
            with self.subTest(want=want):
                _, err = serve(data, lambda m: None, [len(data)])
                self.assertIsInstance(err, qw.ProtocolError)
                self.assertIn(want, str(err))


if __name__ == "__main__":
    unittest.main()
