using System.CommandLine;
using System.Globalization;

namespace Canopy.Cli.Commands;

/// <summary><c>canopy node status --host H [--format table|json]</c>: the members as one server sees them.</summary>
public static class NodeCommand
{
    public static Command Build()
    {
        var node = new Command("node", "Inspect the servers of a running cluster.");
        node.Subcommands.Add(BuildStatus());
        return node;
    }

    private static Command BuildStatus()
    {
        var host = ClusterCli.HostOption();
        var format = ClusterCli.FormatOption();
        var cmd = new Command("status", "List the servers: id, address, state (as the answering server sees it), replicas, leases.") { host, format };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var nodes = (await client.NodeStatusAsync(ct)).Where(n => n is not null).OrderBy(n => n.NodeId).ToList();
            if (parseResult.GetValue(format) == "json")
            {
                ClusterCli.WriteJson(output, json =>
                {
                    json.WriteStartArray();
                    foreach (var n in nodes)
                    {
                        json.WriteStartObject();
                        json.WriteNumber("node_id", n.NodeId);
                        json.WriteString("address", n.Address);
                        if (n.HttpAddress is null)
                        {
                            json.WriteNull("http_address");
                        }
                        else
                        {
                            json.WriteString("http_address", n.HttpAddress);
                        }

                        json.WriteString("state", n.State);
                        json.WriteNumber("replicas", n.Replicas);
                        json.WriteNumber("leases", n.Leases);
                        json.WriteEndObject();
                    }

                    json.WriteEndArray();
                });
                return ExitCodes.Success;
            }

            var rows = nodes.Select(n => new[]
            {
                n.NodeId.ToString(CultureInfo.InvariantCulture),
                n.Address,
                n.State,
                n.Replicas.ToString(CultureInfo.InvariantCulture),
                n.Leases.ToString(CultureInfo.InvariantCulture),
            }).ToList();
            ClusterCli.WriteTable(output, ["id", "address", "state", "replicas", "leases"], rows);
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
