package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// A queue directory belongs to its runners alone: they recover every in-flight file in it and
// claim every ready one. So no other configured directory may be it or lie inside it, and no two
// queues may share one. Shunt and bad directories may be shared between queues (Mailman shares
// them), but not with each other or with lock files. Paths are compared after cleaning ("in/"
// is "in") and after resolving symbolic links of the part that exists.

type dirUse struct {
	field string // "queues[1].shunt_dir"
	kind  string // "dir", "shunt_dir", "bad_dir", "lock_dir"
	queue int
	path  string // as configured (cleaned, absolute when the file gave a relative one)
	real  string // canonical
	dflt  bool   // not in the file: the default beside dir
}

// describe names u in a message: its field, its path and what it really is.
func (u dirUse) describe() string {
	s := u.field
	if u.dflt {
		s = "the default " + s
	}
	return fmt.Sprintf("%s (%s)", s, u.pathNote())
}

func (u dirUse) pathNote() string {
	if u.real != u.path {
		return fmt.Sprintf("%s, really %s", u.path, u.real)
	}
	return u.path
}

func (c *Config) checkDirs(root *yaml.Node, bad func(field, format string, args ...any)) {
	var uses []dirUse
	for i, q := range c.Queues {
		for _, u := range []dirUse{{kind: "dir", path: q.Dir}, {kind: "shunt_dir", path: q.ShuntDir}, {kind: "bad_dir", path: q.BadDir}, {kind: "lock_dir", path: q.LockDir}} {
			if u.path == "" {
				continue
			}
			u.field, u.queue, u.real = fmt.Sprintf("queues[%d].%s", i, u.kind), i, canonical(u.path)
			u.dflt = root != nil && valueOf(root, u.field) == nil
			uses = append(uses, u)
		}
	}
	for j, b := range uses {
		for _, a := range uses[:j] {
			if msg := dirConflict(a, b); msg != "" {
				bad(b.field, "%s", msg)
				break // one problem per field is enough to act on
			}
		}
	}
}

// dirConflict says what is wrong with b given a (configured before it), or "".
func dirConflict(a, b dirUse) string {
	same := a.real == b.real
	named := a.describe()
	switch {
	case same && a.kind == "dir" && b.kind == "dir":
		return fmt.Sprintf("%s: the same directory as %s; two queues on one directory recover each other's in-flight files", b.pathNote(), named)
	case same && a.kind == "dir" && b.kind == "shunt_dir" && a.queue == b.queue:
		return fmt.Sprintf("%s: the queue directory itself; a failing message would run again at every poll, forever", b.pathNote())
	case same && (a.kind == "dir" || b.kind == "dir"):
		return fmt.Sprintf("%s: the same directory as %s; a queue directory holds that queue's messages only", b.pathNote(), named)
	case same && a.kind != b.kind && (a.kind == "lock_dir" || b.kind == "lock_dir"):
		return fmt.Sprintf("%s: the same directory as %s; lock files do not belong among messages", b.pathNote(), named)
	case same && a.kind != b.kind:
		return fmt.Sprintf("%s: the same directory as %s; shunted and bad messages are kept apart", b.pathNote(), named)
	case a.kind == "dir" && inside(b.real, a.real):
		return fmt.Sprintf("%s: inside %s; a queue directory holds that queue's messages only", b.pathNote(), named)
	case b.kind == "dir" && inside(a.real, b.real):
		return fmt.Sprintf("%s: contains %s; a queue directory holds that queue's messages only", b.pathNote(), named)
	}
	return ""
}

// inside reports whether p is strictly below dir.
func inside(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// canonical returns p cleaned, with the symbolic links of its longest existing prefix resolved
// (the directories need not exist yet: qslice creates them).
func canonical(p string) string {
	p = filepath.Clean(p)
	var rest []string
	for cur := p; ; {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(append([]string{r}, rest...)...)
		} else if !errors.Is(err, os.ErrNotExist) {
			return p // unreadable: compare as written
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p
		}
		rest = append([]string{filepath.Base(cur)}, rest...)
		cur = parent
	}
}
