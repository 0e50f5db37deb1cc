package ratelimit

import (
	"testing"
	"time"
)

func TestKeyedLimiter(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	l := NewKeyedLimiter(2, 3, 2, clock)
	for i := range 3 {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("burst event %d refused", i)
		}
	}
	ok, wait := l.Allow("a")
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("past the burst: ok %v, wait %v; want refused for 500ms at 2/s", ok, wait)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("another key shares a's bucket")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("the bucket did not refill")
	}
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("a refused attempt must not have consumed the refill")
	}
	if NewKeyedLimiter(0, 10, 10, clock) != nil {
		t.Fatal("a rate of 0 must switch the limit off")
	}
	var off *KeyedLimiter
	for range 100 {
		if ok, _ := off.Allow("a"); !ok {
			t.Fatal("a switched-off limiter refused")
		}
	}
}
