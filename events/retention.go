package events

import (
	"strconv"
	"time"

	"github.com/tokend/tokend/domain"
)

// Retention is how long the stream keeps events, as per-message TTLs: a
// family's history goes at once, a while after the family is dead for
// certain, and its summary (family.archived) stays longer.
type Retention struct {
	// AfterExpiry keeps a family's events until this long after its
	// absolute expiry; an event recorded later (a refusal of a long-dead
	// token) is kept this long from its own time. Zero keeps events forever.
	AfterExpiry time.Duration
	// Archive keeps a family.archived summary this long. Zero keeps it forever.
	Archive time.Duration
}

// TTL returns how long env stays in the stream, 0 for forever.
func (r Retention) TTL(env Envelope) time.Duration {
	if env.Type == string(domain.FamilyArchived) {
		return r.Archive
	}
	if r.AfterExpiry == 0 {
		return 0
	}
	return r.AfterExpiry + max(0, env.Data.Family.AbsoluteExpiresAt.Sub(env.Time))
}

// DeploymentTTL returns how long a deployment event stays in the stream, 0
// for forever: AfterExpiry from its own time (it concerns no family with an
// expiry), and for a verification event at most VerificationTTL.
func (r Retention) DeploymentTTL(ev DeploymentEvent) time.Duration {
	if ev.Type == SSFVerification && (r.AfterExpiry == 0 || r.AfterExpiry > VerificationTTL) {
		return VerificationTTL
	}
	return r.AfterExpiry
}

// MaxAge is the stream's backstop age for a deployment whose families live
// at most absoluteTTL: no TTL above is longer, so it only removes events
// stored without one (by versions before retention), and never an event
// of a live family. Zero when retention is off.
func (r Retention) MaxAge(absoluteTTL time.Duration) time.Duration {
	if r.AfterExpiry == 0 || r.Archive == 0 {
		return 0
	}
	return absoluteTTL + max(r.AfterExpiry, r.Archive)
}

// ttlHeader is the value of the Nats-TTL header for d: whole seconds,
// rounded up, at least the server's minimum of one.
func ttlHeader(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}
