package keys

// Test helpers for the keys_test package.
var (
	MustKeyring  = mustKeyring
	StaleKeyring = staleKeyring
)
