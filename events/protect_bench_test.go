package events

import (
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// benchProtector is a Protector over an embedded server's key bucket,
// with retention a period key too.
func benchProtector(b *testing.B, retention time.Duration) *Protector {
	b.Helper()
	_, js := eventstest.MustJS(b)
	keys, err := pii.NewKeys([]byte("bench deployment key, 32 bytes or more"))
	if err != nil {
		b.Fatal(err)
	}
	store, err := pii.OpenStore(b.Context(), js, keys, pii.Config{Replicas: 1, CacheSize: 1024, MarkerTTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(store.Stop)
	var periods *pii.Periods
	if retention > 0 {
		if periods, err = pii.OpenPeriods(b.Context(), js, keys, pii.PeriodConfig{Replicas: 1, Retention: retention, CacheSize: 16}); err != nil {
			b.Fatal(err)
		}
	}
	return NewProtector(store, periods)
}

// benchRotation is a rotation's envelope as the writer builds it, with a
// caller's usual context.
func benchRotation() Envelope {
	return Envelope{ID: "Qm2cH0c3xJm1Xk0yR3nWtA", Type: string(domain.TokenRotated), Time: time.Now(),
		FamilyID: "wc72bUidMWixZMIQzfdhRv", Subject: "user-4242@example.com", ClientID: "web-app", Generation: 7,
		Context: domain.Context{"ip": "2001:db8::7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"},
		origin:  originSealed}
}

// benchProtections are the protections measured: the subject key alone,
// and with a context retention a period key too.
var benchProtections = []struct {
	name      string
	retention time.Duration
}{{"subject key", 0}, {"and period key", 720 * time.Hour}}

// BenchmarkSealEvent: what protection adds to every append: the subject's
// pseudonym, its key from the cache, and AES-GCM over subject and context.
func BenchmarkSealEvent(b *testing.B) {
	for _, bc := range benchProtections {
		b.Run(bc.name, func(b *testing.B) {
			p := benchProtector(b, bc.retention)
			first := benchRotation()
			first.origin = originClear // creates the key, as the family's issue did
			if err := p.seal(b.Context(), &first); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				env := benchRotation()
				if err := p.seal(b.Context(), &env); err != nil || env.PII == "" {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRevealEvent: what protection adds to every uncached load of a
// family and every audit row answered.
func BenchmarkRevealEvent(b *testing.B) {
	for _, bc := range benchProtections {
		b.Run(bc.name, func(b *testing.B) {
			p := benchProtector(b, bc.retention)
			sealed := benchRotation()
			sealed.origin = originClear
			if err := p.seal(b.Context(), &sealed); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				env := sealed
				if err := p.Reveal(b.Context(), &env); err != nil || env.Subject != "user-4242@example.com" || len(env.Context) != 2 {
					b.Fatal(err, env.Subject, env.Context)
				}
			}
		})
	}
}
