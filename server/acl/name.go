package acl

import "fmt"

// ValidName returns why name cannot name a policy, or nil.
func ValidName(name string) error {
	if msg := checkName(name); msg != "" {
		return fmt.Errorf("policy %q: %s", clip(name), msg)
	}
	return nil
}
