package signals

import "github.com/tokend/tokend/domain"

// Visible reports whether receiver c may see sig, by its registration
// (docs/protocol.md 17.3, "who may see it"): a client that is no longer
// a receiver sees nothing; a signal addressed to one stream is for that
// stream's receiver (Stream.Wants keeps it to that stream); one about a
// client's sessions is for that client's receivers and receivers of all
// events; a deployment signal (a key revoked) is for every receiver;
// one about no client in particular (a user's sessions with every
// client) is for receivers of all events only.
func Visible(c domain.Client, sig Signal) bool {
	switch v := sig.Visibility; {
	case !c.IsReceiver():
		return false
	case v.Stream != "", v.Deployment:
		return true
	case v.Client != "":
		return c.MaySee(v.Client)
	}
	return c.MaySeeDeployment()
}
