package queue

import (
	"bytes"
	"fmt"
	"strings"
)

// ValidateLockKey checks a message's lock key (Meta.Lock): a plain file name in the lock
// directory. The runner refuses others; enqueue refuses them first.
func ValidateLockKey(key string) error {
	if key == "" || strings.Contains(key, "/") || key == "." || key == ".." || strings.ContainsAny(key, "|\x00") {
		return fmt.Errorf("lock key %q: must be a plain file name (no '/', '|' or NUL, not '.' or '..')", key)
	}
	return nil
}

// EnvKey is how a metadata key is passed to an exec handler: QSLICE_META_<EnvKey(key)>, upper
// case with every character other than a letter or digit replaced by '_'.
func EnvKey(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// ValidateMeta checks what enqueue writes against what the runner accepts: the lock key, extra
// keys that reach a handler under the same variable name ("a-b" and "a_b"), keys or values with
// NUL (which no environment can carry), and a metadata line over MaxHeader, which Decode would
// call corrupt.
func ValidateMeta(m Meta) error {
	if m.Lock != "" {
		if err := ValidateLockKey(m.Lock); err != nil {
			return err
		}
	}
	seen := map[string]string{}
	for k, v := range m.Extra {
		if k == "" || strings.ContainsAny(k, "\x00=") || strings.Contains(v, "\x00") {
			return fmt.Errorf("metadata %q: keys must be non-empty without '=' or NUL, values without NUL", k)
		}
		ek := EnvKey(k)
		if other, ok := seen[ek]; ok {
			a, b := min(k, other), max(k, other)
			return fmt.Errorf("metadata keys %q and %q collide: both reach the handler as QSLICE_META_%s; use one", a, b, ek)
		}
		seen[ek] = k
	}
	var buf bytes.Buffer
	if err := Encode(&buf, m, nil); err != nil {
		return err
	}
	if hdr := buf.Len() - len(Magic); hdr > MaxHeader {
		return fmt.Errorf("metadata is %d bytes encoded, over the limit of %d (MaxHeader): keep metadata small, put data in the body", hdr, MaxHeader)
	}
	return nil
}
