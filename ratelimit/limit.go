// Package ratelimit holds the per-key token buckets behind tokend's rate
// limits.
package ratelimit

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// KeyedLimiter is a token bucket per key (a family, a client), so one noisy
// key cannot write the stream full. Buckets live in a bounded LRU: a key
// evicted under pressure comes back with a full bucket, which errs on the
// side of letting legitimate traffic through.
type KeyedLimiter struct {
	perSecond rate.Limit
	burst     int
	now       func() time.Time

	mu      sync.Mutex
	buckets *lru.Cache[string, *rate.Limiter]
}

// NewKeyedLimiter allows perSecond events per key on average and burst at
// once, tracking at most maxKeys keys. It returns nil, which allows
// everything, when perSecond is 0.
func NewKeyedLimiter(perSecond float64, burst, maxKeys int, now func() time.Time) *KeyedLimiter {
	if perSecond <= 0 {
		return nil
	}
	buckets, _ := lru.New[string, *rate.Limiter](max(maxKeys, 1))
	return &KeyedLimiter{perSecond: rate.Limit(perSecond), burst: max(burst, 1), now: now, buckets: buckets}
}

// Allow takes one event from key's bucket. When the bucket is empty it takes
// nothing and says how long until it holds one again.
func (l *KeyedLimiter) Allow(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	b, ok := l.buckets.Get(key)
	if !ok {
		b = rate.NewLimiter(l.perSecond, l.burst)
		l.buckets.Add(key, b)
	}
	l.mu.Unlock()
	now := l.now()
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
