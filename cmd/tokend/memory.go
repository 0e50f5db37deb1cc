package main

import (
	"context"
	"time"
)

// idleCheck is how often tokend looks for a quiet spell.
const idleCheck = 5 * time.Second

// releaseWhenIdle calls release (debug.FreeOSMemory) once tokend has
// answered nothing for a whole check interval, and again only after the
// next burst. The Go runtime keeps freed heap for reuse and returns it only
// slowly, so an idle tokend would otherwise hold the high-water mark of its
// last burst; under load nothing changes.
func releaseWhenIdle(ctx context.Context, every time.Duration, handled func() uint64, release func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	last, released := handled(), true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
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
