package dpop

import (
	"fmt"
	"slices"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// refusalReasons are every Refusal.Reason, in section 4.3's order.
var refusalReasons = []string{"missing", "malformed", "typ", "alg", "jwk", "signature", "jti", "htm", "htu", "iat", "ath", "nonce", "replay"}

// Reasons returns every reason a proof is refused for (Refusal.Reason).
func Reasons() []string { return slices.Clone(refusalReasons) }

// ParseAlgs reads a comma-separated allow-list of signature algorithms,
// each one of DefaultAlgs, at least one.
func ParseAlgs(list string) ([]jose.SignatureAlgorithm, error) {
	var algs []jose.SignatureAlgorithm
	for _, name := range strings.Split(list, ",") {
		a := jose.SignatureAlgorithm(strings.TrimSpace(name))
		if !slices.Contains(supportedAlgs, a) {
			return nil, fmt.Errorf("%q is not an asymmetric JWS algorithm of %s", a, strings.Join(AlgNames(supportedAlgs), ", "))
		}
		if !slices.Contains(algs, a) {
			algs = append(algs, a)
		}
	}
	return algs, nil
}

// AlgNames returns the names of algs.
func AlgNames(algs []jose.SignatureAlgorithm) []string {
	names := make([]string, len(algs))
	for i, a := range algs {
		names[i] = string(a)
	}
	return names
}
