package api

import "testing"

func TestVersionLineNamesTheRevisionWhenKnown(t *testing.T) {
	for _, c := range []struct{ revision, want string }{
		{"4795e9f74cd018b27a780e40f4e57080035a683e", "tokend " + Version + " go1.26.8 revision 4795e9f74cd018b27a780e40f4e57080035a683e"},
		{"", "tokend " + Version + " go1.26.8"},
	} {
		if got := versionLine("tokend", "go1.26.8", c.revision); got != c.want {
			t.Errorf("versionLine(revision %q) = %q, want %q", c.revision, got, c.want)
		}
	}
}
