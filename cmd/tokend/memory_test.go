package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestReleaseWhenIdle(t *testing.T) {
	var handled, releases atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		releaseWhenIdle(ctx, 5*time.Millisecond, handled.Load, func() { releases.Add(1) })
	}()
	busy := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Millisecond) {
			handled.Add(1)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := releases.Load(); n != 0 {
		t.Fatalf("%d releases before any work", n)
	}
	busy(50 * time.Millisecond)
	checkFor(t, 2*time.Second, time.Millisecond, func() error {
		if releases.Load() != 1 {
			return errors.New("no release after the burst")
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond)
	if n := releases.Load(); n != 1 {
		t.Fatalf("%d releases while staying idle, want 1", n)
	}
	busy(50 * time.Millisecond)
	checkFor(t, 2*time.Second, time.Millisecond, func() error {
		if releases.Load() != 2 {
			return errors.New("no release after the second burst")
		}
		return nil
	})
	cancel()
	<-done
}
