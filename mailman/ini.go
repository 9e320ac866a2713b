package mailman

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// iniFile is one parsed lazr.config (Python configparser) file: sections in file order, keys
// lowercased as configparser does, values with continuation lines joined by "\n".
type iniFile struct {
	name     string
	sections []*iniSection
}

type iniSection struct {
	name string
	line int
	keys []string // in file order
	vals map[string]iniValue
}

type iniValue struct {
	val  string
	file string
	line int
}

var (
	sectionRE = regexp.MustCompile(`^\[(.+)\]`)
	optionRE  = regexp.MustCompile(`^(.*?)\s*([=:])\s*(.*)$`)
)

// parseINI parses data as Python's configparser does with its defaults (delimiters = and :,
// full-line comments # and ;, indented continuation lines, strict: a section or key twice in one
// file is an error, as it is for Mailman).
func parseINI(name string, data []byte) (*iniFile, error) {
	f := &iniFile{name: name}
	var cur *iniSection
	var curKey string
	curIndent := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	seen := map[string]int{}
	for n := 1; sc.Scan(); n++ {
		raw := strings.TrimRight(sc.Text(), " \t\r")
		trimmed := strings.TrimLeft(raw, " \t")
		indent := len(raw) - len(trimmed)
		if trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';' {
			if trimmed == "" {
				curKey = "" // an empty line ends a value for what qslice reads
			}
			continue
		}
		if cur != nil && curKey != "" && indent > curIndent {
			v := cur.vals[curKey]
			v.val = strings.TrimSpace(v.val + "\n" + trimmed)
			cur.vals[curKey] = v
			continue
		}
		if m := sectionRE.FindStringSubmatch(raw); m != nil && indent == 0 {
			if prev, dup := seen[m[1]]; dup {
				return nil, fmt.Errorf("%s:%d: section [%s] appears twice (first on line %d); Mailman refuses this file too", name, n, m[1], prev)
			}
			seen[m[1]] = n
			cur = &iniSection{name: m[1], line: n, vals: map[string]iniValue{}}
			f.sections = append(f.sections, cur)
			curKey = ""
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("%s:%d: %q comes before any [section] header", name, n, trimmed)
		}
		m := optionRE.FindStringSubmatch(trimmed)
		if m == nil || m[1] == "" {
			return nil, fmt.Errorf("%s:%d: [%s]: %q is neither \"key: value\" nor \"key = value\"", name, n, cur.name, trimmed)
		}
		key := strings.ToLower(m[1])
		if _, dup := cur.vals[key]; dup {
			return nil, fmt.Errorf("%s:%d: [%s] %s is set twice; Mailman refuses this file too", name, n, cur.name, key)
		}
		cur.keys = append(cur.keys, key)
		cur.vals[key] = iniValue{val: m[3], file: name, line: n}
		curKey, curIndent = key, indent
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return f, nil
}

// substitute performs Python's string.Template.safe_substitute: $name and ${name} are replaced
// when vars has them, $$ becomes $, anything else is left as it is.
func substitute(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		if s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		name, end := "", i+1
		if s[i+1] == '{' {
			if j := strings.IndexByte(s[i+2:], '}'); j >= 0 && fullIdentRE.MatchString(s[i+2:i+2+j]) {
				name, end = s[i+2:i+2+j], i+3+j
			}
		} else if m := identRE.FindString(s[i+1:]); m != "" {
			name, end = m, i+1+len(m)
		}
		if v, ok := vars[name]; ok && name != "" {
			b.WriteString(v)
			i = end - 1
			continue
		}
		b.WriteByte('$')
	}
	return b.String()
}

var (
	identRE     = regexp.MustCompile(`^[_a-zA-Z][_a-zA-Z0-9]*`)
	fullIdentRE = regexp.MustCompile(`^[_a-zA-Z][_a-zA-Z0-9]*$`)
)
