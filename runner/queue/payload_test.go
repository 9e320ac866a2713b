package queue

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func sampleMeta() Meta {
	return Meta{
		Lock:        "lists/test.example.com",
		Attempts:    1,
		Enqueued:    time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC),
		Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		Extra:       map[string]string{"listid": "test.example.com", "tomoderators": "true"},
	}
}

func encode(t testing.TB, m Meta, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, m, body); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sameMeta compares metadata after a trip through JSON (times compared as instants).
func sameMeta(a, b Meta) bool {
	if !a.Enqueued.Equal(b.Enqueued) || !a.FailedAt.Equal(b.FailedAt) {
		return false
	}
	a.Enqueued, b.Enqueued, a.FailedAt, b.FailedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if len(a.Extra) == 0 && len(b.Extra) == 0 {
		a.Extra, b.Extra = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

func TestEncodeDecode(t *testing.T) {
	for _, body := range [][]byte{nil, []byte("x"), []byte("line\nline\n"), bytes.Repeat([]byte{0, 0xff, '\n'}, 10000)} {
		m := sampleMeta()
		data := encode(t, m, body)
		if !bytes.HasPrefix(data, []byte(Magic)) {
			t.Fatalf("payload does not start with %q", Magic)
		}
		got, gotBody, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(gotBody, body) {
			t.Fatalf("body %q, want %q", gotBody, body)
		}
		m.Size, m.CRC32 = int64(len(body)), got.CRC32
		if !sameMeta(got, m) {
			t.Fatalf("meta %+v, want %+v", got, m)
		}
	}
}

// TestDecodeTruncated: every proper prefix of a payload is refused.
func TestDecodeTruncated(t *testing.T) {
	data := encode(t, sampleMeta(), []byte("From: a@example.com\n\nhello\n"))
	for n := 0; n < len(data); n++ {
		_, _, err := Decode(data[:n])
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Decode of the first %d of %d bytes: %v, want ErrCorrupt", n, len(data), err)
		}
	}
	_, _, err := Decode(data[:len(data)-3])
	if !strings.Contains(err.Error(), "truncated") {
		t.Errorf("message for a cut body: %q, want it to say truncated", err)
	}
	if _, _, err := Decode(append(bytes.Clone(data), 'x')); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Decode with a byte appended: %v, want ErrCorrupt", err)
	}
}

// TestDecodeFlippedByte: changing any one byte anywhere (magic, metadata, its checksum, body) is
// detected.
func TestDecodeFlippedByte(t *testing.T) {
	data := encode(t, sampleMeta(), []byte("From: a@example.com\n\nhello\n"))
	for i := range data {
		for _, mask := range []byte{0x01, 0x02, 0x10, 0x20, 0x80, 0xff} {
			c := bytes.Clone(data)
			c[i] ^= mask
			_, _, err := Decode(c)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("byte %d (%q) ^ %#x: Decode = %v, want ErrCorrupt", i, data[i], mask, err)
			}
		}
	}
	// The messages say which part is damaged.
	hdrEnd := bytes.IndexByte(data[len(Magic):], '\n') + len(Magic)
	for _, c := range []struct {
		at  int
		msg string
	}{
		{len(Magic) + 3, "metadata checksum"},
		{hdrEnd - 2, "metadata checksum"},
		{hdrEnd + 2, "body checksum"},
	} {
		b := bytes.Clone(data)
		b[c.at] ^= 0x01
		if _, _, err := Decode(b); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("flip at %d: %v, want %q", c.at, err, c.msg)
		}
	}
}

func TestDecodeWrongVersion(t *testing.T) {
	data := encode(t, sampleMeta(), []byte("body"))
	data[len("QSLICE")] = '2'
	_, _, err := Decode(data)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `unsupported format version "QSLICE2" (this qslice reads "QSLICE1")`) {
		t.Fatalf("Decode of a version 2 payload: %v", err)
	}
}

// TestDecodeMailmanPickle: files written by Mailman 3.3.8's Switchboard.enqueue (testdata/mailman:
// one with the highest pickle protocol, one with _plaintext=True, protocol 0) are not qslice payloads.
func TestDecodeMailmanPickle(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "mailman", "*.pck"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Mailman files in testdata: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 || (data[0] != 0x80 && data[0] != 'V') {
			t.Fatalf("%s does not start like a pickle (PROTO or UNICODE opcode)", f)
		}
		_, _, err = Decode(data)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not a qslice payload") || !strings.Contains(err.Error(), "Mailman pickle") {
			t.Errorf("Decode(%s) = %v, want ErrCorrupt saying it is not a qslice payload", filepath.Base(f), err)
		}
	}
}

func TestDecodeOtherGarbage(t *testing.T) {
	for _, data := range [][]byte{
		nil,
		[]byte(Magic),
		[]byte(Magic + "\n"),
		[]byte(Magic + "{}\n"),           // no checksum
		[]byte(Magic + "{}\t00000000\n"), // wrong checksum
		append([]byte(Magic), bytes.Repeat([]byte("x"), MaxHeader+10)...), // unterminated, long
	} {
		if _, _, err := Decode(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Decode(%.40q) = %v, want ErrCorrupt", data, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encode(f, sampleMeta(), []byte("hello")))
	f.Add(encode(f, Meta{}, nil))
	f.Add([]byte(Magic + "{}\t00000000\n"))
	f.Add([]byte("QSLICE2\nxx"))
	if files, _ := filepath.Glob(filepath.Join("testdata", "mailman", "*.pck")); len(files) > 0 {
		if data, err := os.ReadFile(files[0]); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, body, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if int64(len(body)) != m.Size {
			t.Fatalf("accepted body of %d bytes, size %d", len(body), m.Size)
		}
		// What Decode accepts, Encode writes back into something Decode reads the same.
		m2, body2, err := Decode(encode(t, m, body))
		if err != nil {
			t.Fatalf("re-encoded payload: %v", err)
		}
		if !bytes.Equal(body, body2) || !sameMeta(m, m2) {
			t.Fatalf("re-encoded payload differs: %+v %q vs %+v %q", m, body, m2, body2)
		}
	})
}

// FuzzEncodeDecode: Encode/Decode round trip, and any one changed byte is detected.
func FuzzEncodeDecode(f *testing.F) {
	f.Add("lists/a", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k", "v", 2, int64(1700000000), []byte("body"), uint(3), byte(1))
	f.Add("", "", "", "", 0, int64(0), []byte{}, uint(0), byte(0xff))
	f.Add("\t\n\"\\", "\x00", "é", "\xff", -5, int64(-1), []byte("\n\n"), uint(1000), byte(0x80))
	f.Fuzz(func(t *testing.T, lock, tp, k, v string, attempts int, sec int64, body []byte, pos uint, mask byte) {
		m := Meta{Lock: lock, Traceparent: tp, Attempts: attempts, Enqueued: time.Unix(sec, 0).UTC(), Extra: map[string]string{k: v}}
		var buf bytes.Buffer
		if err := Encode(&buf, m, body); err != nil {
			if y := m.Enqueued.Year(); y >= 0 && y <= 9999 {
				t.Fatalf("Encode: %v", err)
			}
			return // encoding/json refuses years outside 0..9999
		}
		data := buf.Bytes()
		got, gotBody, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode(Encode()): %v", err)
		}
		want := m
		want.Lock, want.Traceparent = jsonString(lock), jsonString(tp)
		want.Extra = map[string]string{jsonString(k): jsonString(v)}
		want.Size, want.CRC32 = int64(len(body)), got.CRC32
		if !bytes.Equal(gotBody, body) || !sameMeta(got, want) {
			t.Fatalf("round trip: got %+v %q, want %+v %q", got, gotBody, want, body)
		}
		if mask == 0 {
			return
		}
		c := bytes.Clone(data)
		c[pos%uint(len(c))] ^= mask
		if _, _, err := Decode(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d ^ %#x not detected: %v", pos%uint(len(c)), mask, err)
		}
	})
}

// jsonString is s as encoding/json stores it: every byte that is not part of valid UTF-8 becomes
// U+FFFD.
func jsonString(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
