package supervise

import (
	"fmt"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadLines(t *testing.T) {
	long := strings.Repeat("x", 40)
	tests := []struct {
		name string
		in   string
		want []string // line|dropped
	}{
		{name: "empty", in: "", want: nil},
		{name: "lines", in: "a\nbb\r\n\nccc\n", want: []string{"a|0", "bb|0", "|0", "ccc|0"}},
		{name: "last line without newline", in: "a\nb", want: []string{"a|0", "b|0"}},
		{name: "cut", in: long + "\nok\n", want: []string{long[:16] + "|24", "ok|0"}},
		{name: "cut crlf", in: long + "\r\nok\n", want: []string{long[:16] + "|24", "ok|0"}},
		{name: "cut at eof", in: long, want: []string{long[:16] + "|24"}},
		{name: "exactly max", in: long[:16] + "\n", want: []string{long[:16] + "|0"}},
		{name: "max without newline", in: long[:15] + "\n" + long[:17] + "\n", want: []string{long[:15] + "|0", long[:16] + "|1"}},
	}
	for _, tt := range tests {
		for _, reader := range []string{"whole", "onebyte"} {
			t.Run(tt.name+"/"+reader, func(t *testing.T) {
				var got []string
				r := strings.NewReader(tt.in)
				emit := func(line string, dropped int) { got = append(got, fmt.Sprintf("%s|%d", line, dropped)) }
				if reader == "onebyte" {
					readLines(iotest.OneByteReader(r), 16, emit)
				} else {
					readLines(r, 16, emit)
				}
				if strings.Join(got, ",") != strings.Join(tt.want, ",") {
					t.Errorf("readLines(%q) = %q, want %q", tt.in, got, tt.want)
				}
			})
		}
	}
}
