package compile

// The Istio Gateway emitter.

const (
	gatewayAPIVersion = "networking.istio.io/v1"
	gatewayKind       = "Gateway"
	maxPort           = 65535
)

// gatewayServer is one server of a Gateway: one host on one port.
type gatewayServer struct {
	name     string // the port is named "<http|https>-<name>"
	host     string
	port     uint32
	protocol string // HTTP or HTTPS
	// tlsMode is SIMPLE or MUTUAL when protocol is HTTPS, with the secret
	// named by credentialName.
	tlsMode, credentialName string
}

// gatewaySpec returns the spec of a Gateway for the pods with labels,
// listening as servers say, in their order.
func gatewaySpec(labels map[string]string, servers []gatewayServer) map[string]any {
	sel := stringMap(labels)
	list := make([]any, 0, len(servers))
	for _, s := range servers {
		prefix := "http-"
		if s.protocol == "HTTPS" {
			prefix = "https-"
		}
		server := map[string]any{
			"port": map[string]any{
				"number":   int64(s.port),
				"name":     prefix + s.name,
				"protocol": s.protocol,
			},
			"hosts": []any{s.host},
		}
		if s.tlsMode != "" {
			server["tls"] = map[string]any{
				"mode":           s.tlsMode,
				"credentialName": s.credentialName,
			}
		}
		list = append(list, server)
	}
	return map[string]any{
		"selector": sel,
		"servers":  list,
	}
}
