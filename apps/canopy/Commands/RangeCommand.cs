using System.CommandLine;
using System.Globalization;
using Canopy.Client;
using Canopy.Rpc;

namespace Canopy.Cli.Commands;

/// <summary><c>canopy range list --host H [--format table|json]</c>: the ranges as one server sees them.</summary>
public static class RangeCommand
{
    public static Command Build()
    {
        var range = new Command("range", "Inspect the ranges of a running cluster.");
        range.Subcommands.Add(BuildList());
        return range;
    }

    private static Command BuildList()
    {
        var host = ClusterCli.HostOption();
        var format = ClusterCli.FormatOption();
        var cmd = new Command("list", "List the ranges: bounds, replicas, leaseholder, Raft leader, term, applied index.") { host, format };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var ranges = (await client.ListRangesAsync(ct))
                .Where(r => r is not null)
                .OrderBy(r => r.StartKey ?? [], Comparer<byte[]>.Create((a, b) => KeyOrder.Compare(a, b)))
                .ToList();

            // Leaseholder addresses: from the ranges when they carry them, else from the node map (best effort).
            var addresses = new Dictionary<ulong, string>();
            if (ranges.Any(r => r.Leaseholder != 0 && string.IsNullOrEmpty(r.LeaseholderAddress)))
            {
                try
                {
                    foreach (var n in await client.NodeStatusAsync(ct))
                    {
                        addresses[n.NodeId] = n.Address;
                    }
                }
                catch (CanopyException)
                {
                    // the table shows the node ids only
                }
            }

            string? AddressOf(RangeInfo r) =>
                !string.IsNullOrEmpty(r.LeaseholderAddress) ? r.LeaseholderAddress
                : r.Leaseholder != 0 && addresses.TryGetValue(r.Leaseholder, out var a) && a.Length > 0 ? a
                : null;

            if (parseResult.GetValue(format) == "json")
            {
                ClusterCli.WriteJson(output, json =>
                {
                    json.WriteStartArray();
                    foreach (var r in ranges)
                    {
                        json.WriteStartObject();
                        json.WriteNumber("range_id", r.RangeId);
                        json.WriteString("start_key", CanopyKeys.Format(r.StartKey ?? []));
                        if (r.EndKey is null)
                        {
                            json.WriteNull("end_key");
                        }
                        else
                        {
                            json.WriteString("end_key", CanopyKeys.Format(r.EndKey));
                        }

                        json.WriteStartArray("replicas");
                        foreach (var id in r.Replicas ?? [])
                        {
                            json.WriteNumberValue(id);
                        }

                        json.WriteEndArray();
                        NumberOrNull(json, "leaseholder", r.Leaseholder);
                        if (AddressOf(r) is { } address)
                        {
                            json.WriteString("leaseholder_address", address);
                        }
                        else
                        {
                            json.WriteNull("leaseholder_address");
                        }

                        NumberOrNull(json, "raft_leader", r.RaftLeader);
                        json.WriteNumber("term", r.Term);
                        json.WriteNumber("applied_index", r.AppliedIndex);
                        json.WriteEndObject();
                    }

                    json.WriteEndArray();
                });
                return ExitCodes.Success;
            }

            var rows = ranges.Select(r => new[]
            {
                Id(r.RangeId),
                r.StartKey is null or { Length: 0 } ? "/Min" : CanopyKeys.Format(r.StartKey),
                r.EndKey is null ? "/Max" : CanopyKeys.Format(r.EndKey),
                string.Join(',', (r.Replicas ?? []).Select(Id)),
                r.Leaseholder == 0 ? "-" : AddressOf(r) is { } a ? $"{Id(r.Leaseholder)} ({a})" : Id(r.Leaseholder),
                r.RaftLeader == 0 ? "-" : Id(r.RaftLeader),
                Id(r.Term),
                Id(r.AppliedIndex),
            }).ToList();
            ClusterCli.WriteTable(output, ["range id", "start key", "end key", "replicas", "leaseholder", "raft leader", "term", "applied index"], rows);
            return ExitCodes.Success;
        }));
        return cmd;
    }

    private static void NumberOrNull(System.Text.Json.Utf8JsonWriter json, string name, ulong value)
    {
        if (value == 0)
        {
            json.WriteNull(name);
        }
        else
        {
            json.WriteNumber(name, value);
        }
    }

    private static string Id(ulong value) => value.ToString(CultureInfo.InvariantCulture);
}
