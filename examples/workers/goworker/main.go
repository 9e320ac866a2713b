// Command goworker is an example persistent worker written with the Go reference library
// (sdk/go/qsworker): it appends "<message id> <pid>" to the file named by $WORKER_LEDGER, when set,
// and answers done. Configure it as handler.worker: [/usr/local/bin/goworker].
package main

import (
	"fmt"
	"log"
	"os"

	"github.com/qslice/qslice/sdk/go/qsworker"
)

func main() {
	var ledger *os.File
	if p := os.Getenv("WORKER_LEDGER"); p != "" {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		ledger = f
	}
	pid := os.Getpid()
	err := qsworker.Run(func(m *qsworker.Message) error {
		if ledger != nil {
			if _, err := fmt.Fprintf(ledger, "%s %d\n", m.MessageID, pid); err != nil {
				return qsworker.Retry(0, "ledger: "+err.Error())
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}
