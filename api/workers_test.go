package api

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWorkersRunConcurrentlyReuseAndExit: a job that blocks does not hold up
// the next, a finished worker takes the next job instead of a new goroutine
// starting, and idle workers exit.
func TestWorkersRunConcurrentlyReuseAndExit(t *testing.T) {
	w := newWorkers(200 * time.Millisecond)
	base := runtime.NumGoroutine()

	release := make(chan struct{})
	started := make(chan struct{})
	w.run(func() { close(started); <-release })
	<-started
	done := make(chan struct{})
	w.run(func() { close(done) }) // must not wait for the blocked job
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a job waited for a blocked one")
	}
	close(release)

	// Sequential jobs reuse the idle workers instead of starting a
	// goroutine each. On a busy machine a worker that just ran a job is now
	// and then not back waiting when the next one comes, so a few new ones
	// may start; without reuse there would be 1000.
	ran := map[string]bool{}
	for range 1000 {
		var id string
		var wg sync.WaitGroup
		wg.Add(1)
		w.run(func() { id = goroutineID(); wg.Done() })
		wg.Wait()
		ran[id] = true
	}
	if len(ran) > 50 {
		t.Fatalf("1000 sequential jobs ran on %d goroutines, want the idle workers reused", len(ran))
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() <= base })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met in 5 s (%d goroutines)", runtime.NumGoroutine())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutineID returns the id of the calling goroutine, from the first line
// of its stack ("goroutine 42 [running]:"); ids are never reused.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	return id
}
