package sim

import (
	"context"
	"io"
	"testing"
)

// BenchmarkScale runs the scale bench at 200 nodes (the command runs 1,000).
func BenchmarkScale(b *testing.B) {
	for i := 0; i < b.N; i++ {
		if err := BenchScale(context.Background(), io.Discard, 200); err != nil {
			b.Fatal(err)
		}
	}
}
