package queue

// Entry is one directory entry as List reports it. Name aliases List's buffer: it is valid only
// during the callback (copy it with string(e.Name) to keep it).
type Entry struct {
	Name  []byte
	IsDir bool // known to be a directory (Linux reports the type with the name; elsewhere false)
}
