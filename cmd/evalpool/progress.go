package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how many of a wait's evals ended.
type progress interface {
	// Set says that n ended.
	Set(n int)
	// Finish shows the last count and ends its line.
	Finish()
}

// progressEvery is how often a wait whose stderr is no terminal writes a
// line of progress.
const progressEvery = 5 * time.Second

// newProgress is a progress bar on stderr when it is a terminal. Elsewhere
// (a CI log) it writes a plain line every progressEvery and one at the end:
// a bar's \r frames would pile up in the log.
func (a *app) newProgress(total int, what string) progress {
	if f, ok := a.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return barProgress{w: a.stderr, bar: progressbar.NewOptions(total,
			progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
		)}
	}
	return &lineProgress{w: a.stderr, what: what, total: total, shown: -1}
}

type barProgress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func (p barProgress) Set(n int) { _ = p.bar.Set(n) }

func (p barProgress) Finish() {
	_ = p.bar.Finish()
	fmt.Fprintln(p.w)
}

type lineProgress struct {
	w        io.Writer
	what     string
	total, n int
	shown    int // the count of the last line; -1 before the first
	shownAt  time.Time
}

func (p *lineProgress) Set(n int) {
	p.n = n
	if time.Since(p.shownAt) >= progressEvery {
		p.show()
	}
}

func (p *lineProgress) Finish() {
	if p.n != p.shown {
		p.show()
	}
}

func (p *lineProgress) show() {
	p.shown, p.shownAt = p.n, time.Now()
	fmt.Fprintf(p.w, "%s: %d of %d ended\n", p.what, p.n, p.total)
}
