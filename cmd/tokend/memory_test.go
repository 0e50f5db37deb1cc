package main

import (
	"context"
	"testing"
	"time"
)

// TestReleaseWhenIdle drives releaseWhenIdle tick by tick: each tick reads
// the number of requests answered so far, and a release must come after
// exactly the first quiet tick following some work.
func TestReleaseWhenIdle(t *testing.T) {
	ticks := make(chan time.Time)
	counts := make(chan uint64)     // what each look at the request count returns
	releases := make(chan struct{}) // one per release
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go releaseWhenIdle(ctx, ticks, func() uint64 { return <-counts }, func() { releases <- struct{}{} })
	counts <- 0

	// step delivers a tick that finds count requests answered; a release it
	// causes must be taken before the next step, so an unexpected one
	// blocks the loop and the next step fails.
	step := func(count uint64, wantRelease bool) {
		t.Helper()
		select {
		case ticks <- time.Time{}:
		case <-time.After(5 * time.Second):
			t.Fatalf("tick before count %d not taken: an unexpected release is pending", count)
		}
		counts <- count
		if wantRelease {
			select {
			case <-releases:
			case <-time.After(5 * time.Second):
				t.Fatalf("no release after the quiet tick at count %d", count)
			}
		}
	}
	step(0, false) // idle from the start: nothing to hand back
	step(0, false)
	step(5, false) // a burst
	step(9, false)
	step(9, true) // quiet: release
	step(9, false)
	step(9, false) // still quiet: not again
	step(12, false)
	step(12, true) // the next burst is released too
	step(12, false)
	step(12, false) // takes its tick only if the one before released nothing
}
