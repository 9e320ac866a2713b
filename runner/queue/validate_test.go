package queue

import (
	"bytes"
	"strings"
	"testing"
)

func TestValidateMeta(t *testing.T) {
	for _, c := range []struct {
		name string
		m    Meta
		want string // "" = valid
	}{
		{"empty", Meta{}, ""},
		{"plain lock and meta", Meta{Lock: "list-a.lck", Extra: map[string]string{"list": "a@example.org", "a-b": "1"}}, ""},
		{"lock ..", Meta{Lock: ".."}, "lock key"},
		{"lock .", Meta{Lock: "."}, "lock key"},
		{"lock with slash", Meta{Lock: "../x"}, "lock key"},
		{"absolute lock", Meta{Lock: "/etc/passwd"}, "lock key"},
		{"lock with NUL", Meta{Lock: "a\x00"}, "lock key"},
		{"lock with flufl separator", Meta{Lock: "a|b"}, "lock key"},
		{"colliding keys", Meta{Extra: map[string]string{"a-b": "1", "a_b": "2"}}, `"a-b" and "a_b" collide`},
		{"colliding by case", Meta{Extra: map[string]string{"list": "1", "LIST": "2"}}, "collide"},
		{"NUL in a value", Meta{Extra: map[string]string{"k": "a\x00"}}, "NUL"},
		{"= in a key", Meta{Extra: map[string]string{"a=b": "1"}}, "'='"},
		{"header over the limit", Meta{Extra: map[string]string{"k": strings.Repeat("\x01", MaxHeader/4)}}, "over the limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateMeta(c.m)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("err = %v, want it to say %q", err, c.want)
			}
		})
	}
}

// FuzzValidateMeta: whatever enqueue's validation accepts, the runner accepts too: the payload
// decodes, the lock key is a plain name, and every key reaches the handler under its own variable.
func FuzzValidateMeta(f *testing.F) {
	f.Add("list-a", "a-b", "1", "a_b", "2")
	f.Add("..", "k", "v", "K", "w")
	f.Add("", "x\x00", "", "y", "\xff")
	f.Fuzz(func(t *testing.T, lock, k1, v1, k2, v2 string) {
		m := Meta{Lock: lock, Extra: map[string]string{k1: v1, k2: v2}}
		if ValidateMeta(m) != nil {
			return
		}
		if lock != "" && ValidateLockKey(lock) != nil {
			t.Fatalf("accepted lock key %q", lock)
		}
		if k1 != k2 && EnvKey(k1) == EnvKey(k2) {
			t.Fatalf("accepted colliding keys %q and %q", k1, k2)
		}
		var buf bytes.Buffer
		if err := Encode(&buf, m, []byte("body")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Decode(buf.Bytes()); err != nil {
			t.Fatalf("accepted metadata the runner cannot decode: %v", err)
		}
	})
}
