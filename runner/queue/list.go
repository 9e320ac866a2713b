package queue

// Entry is one directory entry as List reports it. Name aliases List's buffer: it is valid only
// during the callback (copy it with string(e.Name) to keep it).
type Entry struct {
	Name  []byte
	IsDir bool // known to be a directory (Linux reports the type with the name; elsewhere false)
	// Special: known to be neither a regular file nor a directory (a symbolic link, a FIFO, a
	// socket, a device), from the type the listing reports; false when the type is unknown.
	Special bool
}
