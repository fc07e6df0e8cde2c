package evaltest

import (
	"bytes"
	"strings"
	"sync"

	"github.com/rs/zerolog"
)

// LogBuffer collects JSON log lines written by concurrent goroutines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Count returns how many lines hold s.
func (b *LogBuffer) Count(s string) int {
	n := 0
	for line := range strings.Lines(b.String()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// Logger returns a zerolog logger writing JSON into a new LogBuffer.
func Logger() (*zerolog.Logger, *LogBuffer) {
	b := &LogBuffer{}
	l := zerolog.New(b).With().Timestamp().Logger()
	return &l, b
}
