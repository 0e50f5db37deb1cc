package main

import (
	"context"
	"time"
)

// idleCheck is how often tokend looks for a quiet spell.
const idleCheck = 5 * time.Second

// releaseWhenIdle calls release (debug.FreeOSMemory) once tokend has
// answered nothing between two ticks, and again only after the next burst. The Go runtime keeps freed heap for reuse and returns it only
// slowly, so an idle tokend would otherwise hold the high-water mark of its
// last burst; under load nothing changes.
func releaseWhenIdle(ctx context.Context, ticks <-chan time.Time, handled func() uint64, release func()) {
	last, released := handled(), true
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
		}
		switch now := handled(); {
		case now != last:
			last, released = now, false
		case !released:
			release()
			released = true
		}
	}
}
