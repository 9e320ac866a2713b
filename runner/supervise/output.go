package supervise

import (
	"bufio"
	"errors"
	"io"
	"strings"
)

// readLines calls emit for every line read from r, without its line ending.
// A line longer than max bytes is cut to its first max bytes and the rest of
// it is dropped; dropped tells how many bytes were. A last line without a
// newline is emitted at EOF. readLines returns when r fails or ends.
func readLines(r io.Reader, max int, emit func(line string, dropped int)) {
	br := bufio.NewReaderSize(r, max)
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			line := string(chunk)
			dropped := 0
			for errors.Is(err, bufio.ErrBufferFull) {
				chunk, err = br.ReadSlice('\n')
				dropped += len(chunk)
			}
			if err == nil {
				dropped -= trailingNewline(chunk) // the line ending is not content
			}
			emit(line, dropped)
		} else if len(chunk) > 0 {
			emit(strings.TrimRight(string(chunk), "\r\n"), 0)
		}
		if err != nil {
			return
		}
	}
}

func trailingNewline(b []byte) int {
	n := 0
	for n < len(b) && (b[len(b)-1-n] == '\n' || b[len(b)-1-n] == '\r') {
		n++
	}
	return n
}
