package api

import (
	"runtime"
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

	// Sequential jobs reuse the idle workers: the count stays at two.
	waitFor(t, func() bool { return runtime.NumGoroutine() <= base+2 })
	for range 1000 {
		var wg sync.WaitGroup
		wg.Add(1)
		w.run(wg.Done)
		wg.Wait()
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		t.Fatalf("%d goroutines after 1000 sequential jobs, want at most %d", n, base+2)
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
