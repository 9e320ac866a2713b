package mailman

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// MaxQueueFileBytes bounds the size of a queue file DecodeQueueFile accepts: a message larger
// than this is no longer something to read in a terminal.
const MaxQueueFileBytes = 32 << 20

// QueueFile is a decoded Mailman queue file: the message and the metadata dict Switchboard.enqueue
// wrote after it.
type QueueFile struct {
	Class    string            `json:"message_class"`           // e.g. mailman.email.message.Message; "str" for a plain-text message
	Headers  [][2]string       `json:"headers"`                 // in order
	Body     string            `json:"-"`                       // the payload when it is text, or the flattened text message
	Parts    int               `json:"parts,omitempty"`         // sub-parts of a multipart message
	Metadata map[string]any    `json:"metadata"`                // the data dict: listid, version, _parsemsg, ...
	ListID   string            `json:"list_id,omitempty"`       // Mailman 3 listid, or Mailman 2.1 listname
	Extra    map[string]string `json:"message_attrs,omitempty"` // other simple attributes of the message object
}

// object is any Python object the pickle names; Decode never imports or runs anything.
type object struct {
	class string
	args  []any
	state any
}

type class struct{ module, name string }

func (c *class) PyNew(args ...any) (any, error) {
	return &object{class: c.module + "." + c.name, args: args}, nil
}
func (c *class) Call(args ...any) (any, error) {
	return &object{class: c.module + "." + c.name, args: args}, nil
}
func (o *object) PySetState(s any) error { o.state = s; return nil }

// DecodeQueueFile reads the two pickles of a Mailman queue file (.pck, .bak or .psv): the message and the
// metadata. Classes are recorded by name, never resolved.
func DecodeQueueFile(data []byte) (*QueueFile, error) {
	if len(data) > MaxQueueFileBytes {
		return nil, fmt.Errorf("%d bytes: larger than the %d bytes qslice decodes (read it with Python and Mailman instead)", len(data), MaxQueueFileBytes)
	}
	bin, err := checkLengths(data)
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(data)
	load := func(what string) (any, error) {
		u := pickle.NewUnpickler(r)
		u.FindClass = func(module, name string) (any, error) { return &class{module, name}, nil }
		v, err := u.Load()
		if err != nil {
			return nil, fmt.Errorf("%s: not a Python pickle as Mailman writes (%w)", what, err)
		}
		return v, nil
	}
	msg, err := load("message")
	if !bin {
		msg = unescapeAll(msg)
	}
	if err != nil {
		return nil, err
	}
	meta, err := load("metadata")
	if err != nil {
		return nil, err
	}
	if !bin {
		meta = unescapeAll(meta)
	}
	e := &QueueFile{Metadata: map[string]any{}}
	md, ok := meta.(*types.Dict)
	if !ok {
		return nil, fmt.Errorf("metadata: a %T, not the dict Mailman writes", meta)
	}
	for _, kv := range *md {
		e.Metadata[fmt.Sprint(plain(kv.Key))] = plain(kv.Value)
	}
	for _, k := range []string{"listid", "listname"} {
		if s, ok := e.Metadata[k].(string); ok && e.ListID == "" {
			e.ListID = s
		}
	}
	switch m := msg.(type) {
	case string:
		e.Class = "str"
		head, body, _ := strings.Cut(strings.ReplaceAll(m, "\r\n", "\n"), "\n\n")
		e.Headers = parseHeaders(head)
		e.Body = body
	case *object:
		e.Class = m.class
		st, _ := m.state.(*types.Dict)
		if st == nil {
			return e, nil
		}
		e.Extra = map[string]string{}
		for _, kv := range *st {
			k := fmt.Sprint(kv.Key)
			switch k {
			case "_headers":
				if l, ok := kv.Value.(*types.List); ok {
					for _, h := range *l {
						if t, ok := h.(*types.Tuple); ok && t.Len() == 2 {
							e.Headers = append(e.Headers, [2]string{fmt.Sprint(t.Get(0)), text(t.Get(1))})
						}
					}
				}
			case "_payload":
				switch p := kv.Value.(type) {
				case string:
					e.Body = p
				case *types.List:
					e.Parts = p.Len()
				}
			case "_unixfrom", "_charset", "_default_type", "preamble", "epilogue":
				if kv.Value != nil {
					e.Extra[k] = text(kv.Value)
				}
			}
		}
	default:
		return nil, fmt.Errorf("message: a %T, neither a message object nor text", msg)
	}
	return e, nil
}

func parseHeaders(head string) [][2]string {
	var hs [][2]string
	for _, l := range strings.Split(head, "\n") {
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && len(hs) > 0 {
			hs[len(hs)-1][1] += "\n" + l
			continue
		}
		if k, v, ok := strings.Cut(l, ":"); ok {
			hs = append(hs, [2]string{k, strings.TrimSpace(v)})
		}
	}
	return hs
}

// text renders a header value: a str, or an email.header.Header object's chunks.
func text(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case *object:
		if st, ok := x.state.(*types.Dict); ok {
			for _, kv := range *st {
				if kv.Key == "_chunks" {
					var b strings.Builder
					if l, ok := kv.Value.(*types.List); ok {
						for _, c := range *l {
							if t, ok := c.(*types.Tuple); ok && t.Len() > 0 {
								b.WriteString(fmt.Sprint(t.Get(0)))
							}
						}
					}
					return b.String()
				}
			}
		}
		return "<" + x.class + ">"
	}
	return fmt.Sprint(plain(v))
}

// plain turns decoded values into JSON-friendly Go values.
func plain(v any) any {
	switch x := v.(type) {
	case *types.Dict:
		m := map[string]any{}
		for _, kv := range *x {
			m[fmt.Sprint(plain(kv.Key))] = plain(kv.Value)
		}
		return m
	case *types.List:
		out := make([]any, 0, x.Len())
		for _, e := range *x {
			out = append(out, plain(e))
		}
		return out
	case *types.Tuple:
		out := make([]any, 0, x.Len())
		for _, e := range *x {
			out = append(out, plain(e))
		}
		return out
	case []byte:
		return string(x)
	case *object:
		return "<" + x.class + ">"
	case *types.Set, *types.FrozenSet:
		return fmt.Sprint(x)
	}
	return v
}

// unescapeAll decodes Python's raw-unicode-escape in every string of a protocol 0 pickle (its
// UNICODE opcode carries text that way; the decoder hands it over as it is).
func unescapeAll(v any) any {
	switch x := v.(type) {
	case string:
		return rawUnicodeUnescape(x)
	case *types.Dict:
		for i := range *x {
			(*x)[i].Key = unescapeAll((*x)[i].Key)
			(*x)[i].Value = unescapeAll((*x)[i].Value)
		}
	case *types.List:
		for i := range *x {
			(*x)[i] = unescapeAll((*x)[i])
		}
	case *types.Tuple:
		for i := range *x {
			(*x)[i] = unescapeAll((*x)[i])
		}
	}
	return v
}

// rawUnicodeUnescape: bytes are Latin-1 code points, except \uXXXX and \UXXXXXXXX escapes.
func rawUnicodeUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && (s[i+1] == 'u' || s[i+1] == 'U') {
			n := 4
			if s[i+1] == 'U' {
				n = 8
			}
			if i+2+n <= len(s) {
				if r, err := strconv.ParseUint(s[i+2:i+2+n], 16, 32); err == nil {
					b.WriteRune(rune(r))
					i += 1 + n
					continue
				}
			}
		}
		b.WriteRune(rune(s[i]))
	}
	return b.String()
}
