package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/qslice/qslice/internal/safefile"
)

// ReasonInFlightTooOften begins the reason recorded for a message moved to bad/ because it was
// found in flight MaxAttempts times: each handling was cut off (crash, lost lease) before it ended.
const ReasonInFlightTooOften = "found in flight after a crash or a lost lease"

// MaxAttempts is how many times a message may be claimed and then found in flight after a crash
// (or a lost lease) before it is moved to bad/ instead of being tried again. Mailman uses 3 too.
const MaxAttempts = 3

// DefaultMaxMessageBytes is the default of max_message_bytes: well above what a mail server accepts
// (Postfix's message_size_limit defaults to 10 MB), far below what would hurt a node.
const DefaultMaxMessageBytes = 64 << 20

// ErrGone is returned when a file that was about to be moved no longer exists: another runner
// claimed it first, or an operator removed it. It is not a failure.
var ErrGone = errors.New("file is gone (claimed by another runner?)")

// Dir is one queue directory plus the shunt and bad directories that receive its failed messages.
// Mailman keeps them side by side: queue/in, queue/shunt, queue/bad.
type Dir struct {
	Path     string // the queue directory
	ShuntDir string // failed messages, as ready .pck files that can be requeued
	BadDir   string // messages that could not be handled at all, preserved byte for byte as .psv
	// MaxBytes bounds what is read of one message file (max_message_bytes); 0 means
	// DefaultMaxMessageBytes. A larger file is moved to bad/ unread.
	MaxBytes int64

	syncPath, syncShunt, syncBad dirSyncer // one group committer per directory
}

// NewDir returns the queue at path with Mailman's layout for shunt and bad: siblings of path.
// Empty shunt or bad select that default.
func NewDir(path, shunt, bad string) *Dir {
	if shunt == "" {
		shunt = filepath.Join(filepath.Dir(path), "shunt")
	}
	if bad == "" {
		bad = filepath.Join(filepath.Dir(path), "bad")
	}
	return &Dir{Path: path, ShuntDir: shunt, BadDir: bad}
}

// Ensure creates the three directories if they are missing.
func (d *Dir) Ensure() error {
	for _, p := range []string{d.Path, d.ShuntDir, d.BadDir} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("create queue directory: %w", err)
		}
	}
	return nil
}

// Enqueue writes a new ready message: "<when>+<sha1>.pck.tmp", fsync, rename to ".pck", then fsync of
// the directory, shared with concurrent enqueuers (group commit). When it returns nil the message
// is durable.
func (d *Dir) Enqueue(m Meta, body []byte, now time.Time) (Name, error) {
	if m.Enqueued.IsZero() {
		m.Enqueued = now
	}
	var buf bytes.Buffer
	if err := Encode(&buf, m, body); err != nil {
		return Name{}, err
	}
	when := FormatWhen(now)
	// The digest spreads messages over slices. Like Mailman's it hashes the payload, the queue and
	// the time; a random nonce keeps two identical messages enqueued in the same instant apart.
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return Name{}, fmt.Errorf("enqueue: read random: %w", err)
	}
	h := sha1.New()
	h.Write(buf.Bytes())
	h.Write([]byte(filepath.Base(d.Path)))
	h.Write([]byte(when))
	h.Write(nonce[:])
	var dg Digest
	copy(dg[:], h.Sum(nil))
	name := Name{Base: when + "+" + dg.String(), Digest: dg, Suffix: SuffixReady}
	name.When, _ = parseWhen(when)
	if err := writeFileSync(filepath.Join(d.Path, name.Base+SuffixTemp), buf.Bytes()); err != nil {
		return Name{}, fmt.Errorf("enqueue into %s: %w", d.Path, err)
	}
	if err := os.Rename(filepath.Join(d.Path, name.Base+SuffixTemp), filepath.Join(d.Path, name.Base+SuffixReady)); err != nil {
		return Name{}, fmt.Errorf("enqueue into %s: %w", d.Path, err)
	}
	if err := d.syncPath.sync(d.Path); err != nil {
		return Name{}, fmt.Errorf("enqueue into %s: sync directory: %w", d.Path, err)
	}
	return name, nil
}

// Claim moves a ready message to in flight. Of two runners racing for one file exactly one succeeds;
// the other gets ErrGone.
func (d *Dir) Claim(n Name) error {
	err := rename(filepath.Join(d.Path, n.Base+SuffixReady), filepath.Join(d.Path, n.Base+SuffixInFlight))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("claim %s: %w", n.Base, ErrGone)
	}
	if err != nil {
		return fmt.Errorf("claim %s in %s: %w", n.Base, d.Path, err)
	}
	return nil
}

// ReadInFlight reads a claimed message's raw bytes.
func (d *Dir) ReadInFlight(n Name) ([]byte, error) {
	return d.ReadInFlightInto(n, nil)
}

// ReadInFlightInto is ReadInFlight reading into buf's spare capacity (reused between messages by the
// runner). Only a regular file of at most MaxBytes is read, never through a symbolic link and
// never blocking (a FIFO): otherwise the error wraps safefile.ErrNotRegular or ErrTooLarge, and
// the file, being claimed, is ours to move to bad/.
func (d *Dir) ReadInFlightInto(n Name, buf []byte) ([]byte, error) {
	path := filepath.Join(d.Path, n.Base+SuffixInFlight)
	b, err := safefile.Read(path, d.maxBytes(), buf)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

func (d *Dir) maxBytes() int64 {
	if d.MaxBytes > 0 {
		return d.MaxBytes
	}
	return DefaultMaxMessageBytes
}

// Unsafe reports whether err (from reading a message) is about the file itself, not the disk: it
// is not a regular file, or too large. Such a file is moved aside, never retried.
func Unsafe(err error) bool {
	return errors.Is(err, safefile.ErrNotRegular) || errors.Is(err, safefile.ErrTooLarge)
}

// rename is rename(2) without os.Rename's extra lstat of the target (which only serves to refuse
// renaming over a directory; qslice's targets are never directories). One syscall per state change.
func rename(from, to string) error {
	if err := syscall.Rename(from, to); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// Finish removes a claimed message after its handler succeeded. This is the only way qslice deletes
// a message.
func (d *Dir) Finish(n Name) error {
	path := filepath.Join(d.Path, n.Base+SuffixInFlight)
	if err := syscall.Unlink(path); err != nil {
		return fmt.Errorf("finish %s: %w", path, &os.PathError{Op: "unlink", Path: path, Err: err})
	}
	return nil
}

// Release returns a claimed message to ready without counting an attempt (the runner gave it back
// on purpose: its slice moved away, or it waits for a retry). The content is left as it is.
func (d *Dir) Release(n Name) error {
	err := rename(filepath.Join(d.Path, n.Base+SuffixInFlight), filepath.Join(d.Path, n.Base+SuffixReady))
	if err != nil {
		return fmt.Errorf("release %s: %w", filepath.Join(d.Path, n.Base+SuffixInFlight), err)
	}
	return nil
}

// Shunt moves a claimed message whose handler failed to the shunt queue, as a ready file of the same
// name whose metadata records the error, the queue of origin and the attempt count. It is written
// completely before the in-flight file is removed, so a crash in between leaves a copy in both places
// (the in-flight one is then recovered and handled again: at least once, never lost).
func (d *Dir) Shunt(n Name, m Meta, body []byte, cause error, now time.Time) error {
	m.Origin = d.Path
	m.Error = cause.Error()
	m.FailedAt = now
	var buf bytes.Buffer
	if err := Encode(&buf, m, body); err != nil {
		return err
	}
	tmp := filepath.Join(d.ShuntDir, n.Base+SuffixTemp)
	if err := writeFileSync(tmp, buf.Bytes()); err != nil {
		return fmt.Errorf("shunt %s: %w", n.Base, err)
	}
	if err := os.Rename(tmp, filepath.Join(d.ShuntDir, n.Base+SuffixReady)); err != nil {
		return fmt.Errorf("shunt %s: %w", n.Base, err)
	}
	if err := d.syncShunt.sync(d.ShuntDir); err != nil {
		return fmt.Errorf("shunt %s: sync %s: %w", n.Base, d.ShuntDir, err)
	}
	return d.Finish(n)
}

// BadReason is the sidecar "<base>.why.json" written next to a message moved to bad/.
type BadReason struct {
	Origin   string    `json:"origin"`
	Reason   string    `json:"reason"`
	Attempts int       `json:"attempts"`
	MovedAt  time.Time `json:"moved_at"`
}

// SuffixWhy is the suffix of the reason file beside a message in bad/.
const SuffixWhy = ".why.json"

// MoveToBad moves a file of this queue (fromSuffix: SuffixInFlight or SuffixReady) into bad/ as
// "<base>.psv", byte for byte, after writing the reason beside it.
func (d *Dir) MoveToBad(n Name, fromSuffix, reason string, attempts int, now time.Time) error {
	why, _ := json.Marshal(BadReason{Origin: d.Path, Reason: reason, Attempts: attempts, MovedAt: now})
	whyPath := filepath.Join(d.BadDir, n.Base+SuffixWhy)
	if err := writeFileSync(whyPath+".tmp", append(why, '\n')); err != nil {
		return fmt.Errorf("move %s to bad: %w", n.Base, err)
	}
	if err := os.Rename(whyPath+".tmp", whyPath); err != nil {
		return fmt.Errorf("move %s to bad: %w", n.Base, err)
	}
	if err := os.Rename(filepath.Join(d.Path, n.Base+fromSuffix), filepath.Join(d.BadDir, n.Base+SuffixBad)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(whyPath)
			return fmt.Errorf("move %s to bad: %w", n.Base, ErrGone)
		}
		return fmt.Errorf("move %s to bad: %w", n.Base, err)
	}
	return d.syncBad.sync(d.BadDir)
}

// RecoverResult says what Recover did with an in-flight file.
type RecoverResult int

const (
	Requeued RecoverResult = iota // back to ready with one more attempt counted
	MovedBad                      // attempts exhausted, or the payload is corrupt
)

// Recover returns an in-flight file left by a crashed (or fenced-off) runner to ready, counting one
// more attempt in its metadata; after MaxAttempts, or when its payload is corrupt, it moves the file to
// bad/ with the reason. The caller must be sure no live handler still works on the file.
//
// Steps, each atomic: write "<base>.bak.tmp" with attempts+1, rename it over "<base>.bak", rename
// that to "<base>.pck". A crash between steps at worst counts one attempt more.
func (d *Dir) Recover(n Name, now time.Time) (RecoverResult, error) {
	data, err := d.ReadInFlight(n)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("recover %s: %w", n.Base, ErrGone)
		}
		if Unsafe(err) {
			if err := d.MoveToBad(n, SuffixInFlight, "found in flight and refused: "+err.Error(), 0, now); err != nil {
				return 0, err
			}
			return MovedBad, nil
		}
		return 0, err
	}
	m, body, err := Decode(data)
	if err != nil {
		if err := d.MoveToBad(n, SuffixInFlight, "found in flight after a crash and unreadable: "+err.Error(), 0, now); err != nil {
			return 0, err
		}
		return MovedBad, nil
	}
	m.Attempts++
	if m.Attempts >= MaxAttempts {
		reason := fmt.Sprintf("%s %d times: the handler never finished it", ReasonInFlightTooOften, m.Attempts)
		if err := d.MoveToBad(n, SuffixInFlight, reason, m.Attempts, now); err != nil {
			return 0, err
		}
		return MovedBad, nil
	}
	var buf bytes.Buffer
	if err := Encode(&buf, m, body); err != nil {
		return 0, err
	}
	bak := filepath.Join(d.Path, n.Base+SuffixInFlight)
	if err := writeFileSync(bak+".tmp", buf.Bytes()); err != nil {
		return 0, fmt.Errorf("recover %s: %w", n.Base, err)
	}
	if err := os.Rename(bak+".tmp", bak); err != nil {
		return 0, fmt.Errorf("recover %s: %w", n.Base, err)
	}
	if err := d.Release(n); err != nil {
		return 0, fmt.Errorf("recover %s: %w", n.Base, err)
	}
	return Requeued, nil
}

// writeFileSync creates path (removing a leftover of an earlier crash, never writing through a
// link), writes data and fsyncs it.
func writeFileSync(path string, data []byte) error {
	return safefile.WriteSync(path, data, 0o644)
}

func parseWhen(s string) (float64, error) {
	var f float64
	_, err := fmt.Sscan(s, &f)
	return f, err
}

// dirSyncer groups directory fsyncs: a caller that arrives while a sync is running waits for the
// next one, which covers its rename too, so N concurrent enqueuers cost about two directory syncs,
// not N.
type dirSyncer struct {
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // syncs started
	done    uint64 // syncs finished
	lastErr error
}

func (s *dirSyncer) sync(dir string) error {
	s.mu.Lock()
	if s.cond == nil {
		s.cond = sync.NewCond(&s.mu)
	}
	// Only a sync that starts after this point surely covers our rename: one already running may
	// have read the directory before it.
	need := s.started + 1
	for s.done < need {
		if !s.running {
			s.running = true
			s.started++
			s.mu.Unlock()
			err := syncDir(dir)
			s.mu.Lock()
			s.running = false
			s.done++
			s.lastErr = err
			s.cond.Broadcast()
			continue
		}
		s.cond.Wait()
	}
	err := s.lastErr
	s.mu.Unlock()
	return err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// ScanNames calls fn with the name of every entry of dir (List with a string per name, for callers
// that keep names). A non-nil error from fn skips the remaining names and is returned.
func ScanNames(dir string, fn func(name string) error) error {
	var ferr error
	err := List(context.Background(), dir, func(_ *os.File, ents []Entry) {
		for _, e := range ents {
			if ferr != nil {
				return
			}
			ferr = fn(string(e.Name))
		}
	})
	if err != nil {
		return fmt.Errorf("scan %s: %w", dir, err)
	}
	return ferr
}
