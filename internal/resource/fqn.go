package resource

import "strings"

// OrganizationOf is the organization FQN of a record's FQN.
func OrganizationOf(fqn string) string {
	parts := strings.SplitN(fqn, "/", 3)
	if len(parts) < 2 {
		return fqn
	}
	return parts[0] + "/" + parts[1]
}

// TenantOf is the FQN of the tenant fqn lies in ("" for none).
func TenantOf(fqn string) string {
	parts := strings.SplitN(fqn, "/", 5)
	if len(parts) < 4 || parts[2] != "tenants" {
		return ""
	}
	return strings.Join(parts[:4], "/")
}
