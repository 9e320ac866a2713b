package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qslice/qslice/internal/safefile"
)

// Requeue moves a message from a shunt directory (a ".pck" file) or a bad directory (a ".psv" file with
// its ".why.json") back to a queue: to, or the queue of origin recorded with it when to is empty.
// The error, failure time and attempt count are cleared so the message starts afresh. The new ready
// file is complete and durable before the old one is removed: a crash in between leaves a copy in
// both places, never in neither. It returns the path of the new ready file. Only a regular file of
// at most maxBytes (0: DefaultMaxMessageBytes) is read, never through a link.
func Requeue(dir, file, to string, maxBytes int64) (string, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessageBytes
	}
	n, err := ParseName(file)
	if err != nil {
		return "", fmt.Errorf("requeue %s: %w", filepath.Join(dir, file), err)
	}
	src := filepath.Join(dir, file)
	data, err := safefile.Read(src, maxBytes, nil)
	if err != nil {
		return "", fmt.Errorf("requeue: %w", err)
	}
	m, body, err := Decode(data)
	if err != nil {
		return "", fmt.Errorf("requeue %s: %w: only qslice's own messages can be requeued by qslice (move Mailman's with Mailman's unshunt)", src, err)
	}
	why := filepath.Join(dir, n.Base+SuffixWhy)
	if to == "" {
		to = m.Origin
		if n.Suffix == SuffixBad {
			var r BadReason
			if b, err := safefile.Read(why, MaxHeader, nil); err == nil && json.Unmarshal(b, &r) == nil && r.Origin != "" {
				to = r.Origin
			}
		}
	}
	if to == "" {
		return "", fmt.Errorf("requeue %s: the queue of origin is not recorded: pass --to DIR", src)
	}
	if st, err := os.Stat(to); err != nil || !st.IsDir() {
		return "", fmt.Errorf("requeue %s: target queue %s is not a directory (pass --to DIR)", src, to)
	}
	m.Origin, m.Error, m.FailedAt, m.Attempts = "", "", time.Time{}, 0
	var buf bytes.Buffer
	if err := Encode(&buf, m, body); err != nil {
		return "", err
	}
	tmp := filepath.Join(to, n.Base+SuffixTemp)
	dst := filepath.Join(to, n.Base+SuffixReady)
	if _, err := os.Stat(dst); err == nil {
		return "", fmt.Errorf("requeue %s: %s already exists (requeued before?); remove one of them by hand", src, dst)
	}
	if err := writeFileSync(tmp, buf.Bytes()); err != nil {
		return "", fmt.Errorf("requeue %s: %w", src, err)
	}
	if err := rename(tmp, dst); err != nil {
		return "", fmt.Errorf("requeue %s: %w", src, err)
	}
	if err := syncDir(to); err != nil {
		return "", fmt.Errorf("requeue %s: sync %s: %w", src, to, err)
	}
	if err := os.Remove(src); err != nil {
		return dst, fmt.Errorf("requeued to %s but could not remove %s: %w (remove it by hand, or it is requeued twice)", dst, src, err)
	}
	if err := os.Remove(why); err != nil && !errors.Is(err, os.ErrNotExist) {
		return dst, fmt.Errorf("requeued to %s; leftover reason file %s: %w", dst, why, err)
	}
	return dst, nil
}

// Requeueable reports whether a file in a shunt or bad directory is a message Requeue can take.
func Requeueable(file string) bool {
	return (strings.HasSuffix(file, SuffixReady) || strings.HasSuffix(file, SuffixBad)) && !strings.HasSuffix(file, SuffixTemp)
}
