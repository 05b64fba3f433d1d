// The VMM layer: machines built on the KVM API.
