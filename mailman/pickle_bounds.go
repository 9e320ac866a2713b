package mailman

import (
	"bytes"
	enc "encoding/binary"
	"fmt"
)

// Pickle opcodes by the size of their argument: a fixed count of bytes, a little-endian length
// of 1, 4 or 8 bytes followed by that many bytes, or lines.
var (
	fixedArg = map[byte]int{'J': 4, 'K': 1, 'M': 2, 'G': 8, 'h': 1, 'j': 4, 'q': 1, 'r': 4, 0x80: 1, 0x82: 1, 0x83: 2, 0x84: 4}
	lenArg   = map[byte]int{'T': 4, 'U': 1, 'X': 4, 0x8c: 1, 0x8d: 8, 'B': 4, 'C': 1, 0x8e: 8, 0x96: 8, 0x8a: 1, 0x8b: 4}
	lineArgs = map[byte]int{'I': 1, 'L': 1, 'F': 1, 'S': 1, 'V': 1, 'g': 1, 'p': 1, 'P': 1, 'c': 2, 'i': 2}
	noArg    = "().0 12NRa bdeltosu}]\x81\x85\x86\x87\x88\x89\x90\x91\x92\x93\x94\x97\x98Q"
)

// checkLengths walks the opcodes of the pickles in data and fails when an argument claims more
// bytes than the file holds, so a damaged or hostile file cannot make the decoder allocate more
// than its own size. FRAME (protocol 4) only announces a size; its contents are opcodes.
func checkLengths(data []byte) (binary bool, err error) {
	for i := 0; i < len(data); {
		op := data[i]
		i++
		if fixedArg[op] > 0 || lenArg[op] > 0 || op == 0x95 || op >= 0x80 {
			binary = true
		}
		switch {
		case op == 0x95: // FRAME
			i += 8
		case fixedArg[op] > 0:
			i += fixedArg[op]
		case lenArg[op] > 0:
			w := lenArg[op]
			if i+w > len(data) {
				return binary, fmt.Errorf("pickle cut short at byte %d", i)
			}
			var n uint64
			switch w {
			case 1:
				n = uint64(data[i])
			case 4:
				n = uint64(enc.LittleEndian.Uint32(data[i:]))
			case 8:
				n = enc.LittleEndian.Uint64(data[i:])
			}
			i += w
			if n > uint64(len(data)-i) {
				return binary, fmt.Errorf("pickle opcode 0x%02x at byte %d claims %d bytes, more than the file holds", op, i-w-1, n)
			}
			i += int(n)
		case lineArgs[op] > 0:
			for range lineArgs[op] {
				j := bytes.IndexByte(data[i:], '\n')
				if j < 0 {
					return binary, fmt.Errorf("pickle cut short at byte %d", i)
				}
				i += j + 1
			}
		case bytes.IndexByte([]byte(noArg), op) >= 0 && op != ' ':
		default:
			return binary, fmt.Errorf("byte %d: 0x%02x is not a pickle opcode", i-1, op)
		}
		if i > len(data) {
			return binary, fmt.Errorf("pickle cut short at byte %d", len(data))
		}
	}
	return binary, nil
}
