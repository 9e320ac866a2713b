package mailman

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qslice/qslice/internal/testenv"
)

// enqueueScript writes queue files with Mailman 3's own Switchboard: a message object with a
// non-ASCII subject (protocol 5), a multipart one, and a _plaintext one (protocol 0).
const enqueueScript = `
import sys
from mailman.core.initialize import initialize_1
initialize_1(sys.argv[1])
from mailman.config import config
from mailman.email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.header import Header
sb = config.switchboards['in']
m = Message()
m['From'] = 'alice@example.org'
m['Subject'] = Header('Grüße aus Köln', 'utf-8')
m['Message-ID'] = '<one@example.org>'
m.set_payload('plain body\n')
print(sb.enqueue(m, listid='test.example.com', tolist=True))
mp = MIMEMultipart()
mp['From'] = 'bob@example.org'
mp['Subject'] = 'two parts'
mp.attach(MIMEText('a')); mp.attach(MIMEText('b'))
print(sb.enqueue(mp, listid='test.example.com'))
print(sb.enqueue('From: carol@example.org\nSubject: caf\xe9 \u2603\n\nplain text\n', listid='other.example.com', _plaintext=True))
`

func TestDecodeQueueFileFromMailman(t *testing.T) {
	python := testenv.RequirePython(t, "mailman.core.initialize", "mailman3")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mailman.cfg")
	os.WriteFile(cfg, []byte("[mailman]\nlayout: t\n[paths.t]\nvar_dir: "+dir+"/var\n"), 0o644)
	script := filepath.Join(dir, "enqueue.py")
	os.WriteFile(script, []byte(enqueueScript), 0o644)
	out, err := exec.Command(python, script, cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("enqueue with Mailman: %v\n%s", err, out)
	}
	bases := strings.Fields(string(out))
	if len(bases) != 3 {
		t.Fatalf("enqueue printed %q", out)
	}
	read := func(i int) *QueueFile {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(dir, "var", "queue", "in", bases[i]+".pck"))
		if err != nil {
			t.Fatal(err)
		}
		q, err := DecodeQueueFile(data)
		if err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
		return q
	}
	header := func(q *QueueFile, name string) string {
		for _, h := range q.Headers {
			if h[0] == name {
				return h[1]
			}
		}
		return ""
	}
	one := read(0)
	if one.Class != "mailman.email.message.Message" || one.ListID != "test.example.com" || one.Body != "plain body\n" ||
		header(one, "From") != "alice@example.org" || header(one, "Subject") != "Grüße aus Köln" ||
		one.Metadata["tolist"] != true || one.Metadata["version"] != 3 || one.Metadata["_parsemsg"] != false {
		t.Errorf("message object: %+v", one)
	}
	two := read(1)
	if two.Parts != 2 || header(two, "Subject") != "two parts" || !strings.HasPrefix(header(two, "Content-Type"), "multipart/mixed") {
		t.Errorf("multipart: %+v", two)
	}
	three := read(2)
	if three.Class != "str" || header(three, "Subject") != "café ☃" || three.Body != "plain text\n" ||
		three.ListID != "other.example.com" || three.Metadata["_parsemsg"] != true {
		t.Errorf("plain text (protocol 0): %+v", three)
	}
}

// Damaged or hostile files are refused with a reason, never decoded into huge allocations.
func TestDecodeQueueFileRefuses(t *testing.T) {
	good, err := os.ReadFile(firstFile(t, "../runner/queue/testdata/mailman/*.pck"))
	if err != nil {
		t.Fatal(err)
	}
	huge := []byte{0x80, 4, 0x8e}
	huge = binary.LittleEndian.AppendUint64(huge, 1<<40)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "message: not a Python pickle"},
		{"truncated", good[:len(good)/2], "more than the file holds"},
		{"claims a terabyte", huge, "claims 1099511627776 bytes, more than the file holds"},
		{"not a pickle", []byte("\x00garbage"), "0x00 is not a pickle opcode"},
		{"too big", make([]byte, MaxQueueFileBytes+1), "larger than the"},
		{"no metadata", good[:strings.LastIndex(string(good), "\x80")], "metadata"},
	}
	for _, c := range cases {
		_, err := DecodeQueueFile(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

func firstFile(t *testing.T, glob string) string {
	t.Helper()
	fs, _ := filepath.Glob(glob)
	if len(fs) == 0 {
		t.Fatal(fmt.Sprintf("no files match %s", glob))
	}
	return fs[0]
}
