package cli

import (
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/resource"
)

// newCreateCmd makes the identity kinds from flags: the same resources
// `apply -f` takes as YAML, for when a file is too much.
func newCreateCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "create", Short: "Create service accounts, teams, roles and access bindings from flags"}
	var org, description string
	var members, groups, rules, subjects []string
	var target, role string

	create := func(cmd *cobra.Command, kind, name string, spec map[string]any) error {
		if org == "" {
			return errors.New("--org is required: the organization it belongs to")
		}
		s, err := structpb.NewStruct(spec)
		if err != nil {
			return err
		}
		r := &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: &pb.Metadata{Name: name, Organization: org}, Spec: s}
		res, err := e.resources().Apply(cmd.Context(), connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{r}}))
		if err != nil {
			if vs := violations(err); len(vs) > 0 {
				for _, v := range vs {
					fmt.Fprintf(e.errOut, "error: %s %q: %s: %s\n", kind, name, v.GetField(), v.GetMessage())
				}
				return &ExitError{Code: 1}
			}
			return err
		}
		for _, x := range res.Msg.GetResults() {
			fmt.Fprintf(e.out, "%s %s\n", x.GetResource().GetMetadata().GetFqn(), outcomeWord(x.GetOutcome()))
		}
		return nil
	}
	strs := func(v []string) []any {
		out := make([]any, len(v))
		for i, s := range v {
			out[i] = s
		}
		return out
	}

	sa := &cobra.Command{
		Use: "serviceaccount NAME", Aliases: []string{"sa"}, Short: "Create a service account (then: serviceaccount key create)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return create(cmd, "ServiceAccount", args[0], map[string]any{"description": description})
		},
	}
	team := &cobra.Command{
		Use: "team NAME", Short: "Create a team of people: by name, and by the OIDC provider's groups",
		Example: "  flotilla create team payments --org acme --member carol@example.com --oidc-group payments-eng",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return create(cmd, "Team", args[0], map[string]any{"description": description, "members": strs(members), "oidcGroups": strs(groups)})
		},
	}
	team.Flags().StringSliceVar(&members, "member", nil, "a member's user name (repeat, or comma-separate)")
	team.Flags().StringSliceVar(&groups, "oidc-group", nil, "an OIDC group whose members belong to the team (repeat)")
	roleCmd := &cobra.Command{
		Use: "role NAME", Short: "Create a custom role: permissions on kinds",
		Example: `  flotilla create role gateway-operator --org acme --rule Read:* --rule Write,Create,Delete:IngressGateway,Gateway`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(rules) == 0 {
				return errors.New(`--rule is required: PERMISSIONS:KINDS, e.g. --rule Read:* --rule Write,Delete:VirtualService`)
			}
			var rs []any
			for _, r := range rules {
				perms, kinds, ok := strings.Cut(r, ":")
				if !ok || perms == "" || kinds == "" {
					return fmt.Errorf("--rule %q: write PERMISSIONS:KINDS, e.g. Read,Write:IngressGateway (\"*\" for every kind)", r)
				}
				rs = append(rs, map[string]any{"permissions": strs(strings.Split(perms, ",")), "kinds": strs(strings.Split(kinds, ","))})
			}
			return create(cmd, "Role", args[0], map[string]any{"description": description, "rules": rs})
		},
	}
	roleCmd.Flags().StringArrayVar(&rules, "rule", nil, "PERMISSIONS:KINDS, e.g. Read,Write:IngressGateway (repeat)")
	binding := &cobra.Command{
		Use: "accessbinding NAME", Aliases: []string{"ab"}, Short: "Give a role to subjects on a node of the hierarchy (and below it)",
		Example: `  flotilla create accessbinding payments-editors --org acme \
    --target organizations/acme/tenants/fintech/workspaces/payments --role editor --subject team:payments`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" || role == "" || len(subjects) == 0 {
				return errors.New("--target, --role and --subject are required")
			}
			return create(cmd, "AccessBinding", args[0], map[string]any{"target": target,
				"allow": []any{map[string]any{"role": role, "subjects": strs(subjects)}}})
		},
	}
	binding.Flags().StringVar(&target, "target", "", "FQN of the organization, tenant, workspace, group or cluster")
	binding.Flags().StringVar(&role, "role", "", "admin, editor, creator, writer, reader, or a Role's name")
	binding.Flags().StringSliceVar(&subjects, "subject", nil, `user:NAME, team:NAME or serviceaccount:NAME (repeat)`)
	for _, c := range []*cobra.Command{sa, team, roleCmd, binding} {
		c.Flags().StringVar(&org, "org", "", "organization")
		if c != binding {
			c.Flags().StringVar(&description, "description", "", "what it is for")
		}
		cmd.AddCommand(c)
	}
	return cmd
}
