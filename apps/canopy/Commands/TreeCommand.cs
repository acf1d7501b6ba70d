using System.CommandLine;
using System.Globalization;
using Canopy.Client;
using Canopy.Tree;
using Canopy.Variant;

namespace Canopy.Cli.Commands;

/// <summary>
/// <c>canopy tree ls|spawn|set|free --host H</c>: the scene tree of a running cluster (docs/tree.md). Paths are node
/// names from the root separated by '/'; property values on the command line are ints, floats or strings (stored as
/// Godot Variants); <c>ls</c> prints each node with its type, owner and properties decoded from their Variant bytes.
/// </summary>
public static class TreeCommand
{
    public static Command Build()
    {
        var tree = new Command("tree", "Read and change the scene tree of a running cluster.");
        tree.Subcommands.Add(BuildLs());
        tree.Subcommands.Add(BuildSpawn());
        tree.Subcommands.Add(BuildSet());
        tree.Subcommands.Add(BuildFree());
        tree.Subcommands.Add(BuildWatch());
        return tree;
    }

    private static Option<string> TreeName() => new("--tree") { Description = "Which tree (a cluster may hold several).", HelpName = "name", DefaultValueFactory = _ => "main" };

    private static Command BuildLs()
    {
        var host = ClusterCli.HostOption();
        var name = TreeName();
        var path = new Argument<string>("path") { Description = "Node path from the root (default: the whole tree).", DefaultValueFactory = _ => "/" };
        var depth = Options.Int("--depth", "How many levels below the node to print.", 32, 0);
        var cmd = new Command("ls", "Print a subtree: names, types, owners and properties, read in one transaction.") { host, name, path, depth };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var tree = SceneTree.ForClient(client, parseResult.GetValue(name)!);
            var id = await ResolveAsync(tree, parseResult.GetValue(path)!, ct);
            var snap = await tree.ReadSubtreeAsync(id, parseResult.GetValue(depth), ct);
            output.WriteLine($"# tree {tree.Name} at {snap.Timestamp}");
            Print(output, snap.Root, 0);
            return ExitCodes.Success;
        }));
        return cmd;
    }

    private static Command BuildSpawn()
    {
        var host = ClusterCli.HostOption();
        var name = TreeName();
        var parent = new Argument<string>("parent") { Description = "Path of the parent ('/' for the root)." };
        var child = new Argument<string>("name") { Description = "The new node's name (unique among its siblings)." };
        var type = new Option<string>("--type") { Description = "Class name, or a scene path (res://...).", HelpName = "type", DefaultValueFactory = _ => "Node" };
        var region = new Option<string?>("--region") { Description = "Place the node in this region (default: by hash of its id).", HelpName = "region" };
        var props = new Option<string[]>("--prop") { Description = "A property NAME=VALUE (int, float or text); repeatable.", HelpName = "name=value", AllowMultipleArgumentsPerToken = true };
        var cmd = new Command("spawn", "Spawn a node (one transaction, across ranges when the parent lives elsewhere).") { host, name, parent, child, type, region, props };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var tree = SceneTree.ForClient(client, parseResult.GetValue(name)!);
            var parentId = await ResolveAsync(tree, parseResult.GetValue(parent)!, ct);
            var t = parseResult.GetValue(type)!;
            var spec = (t.StartsWith("res://", StringComparison.Ordinal) ? NodeSpec.Scene(parseResult.GetValue(child)!, t) : NodeSpec.Class(parseResult.GetValue(child)!, t)) with
            {
                Properties = ParseProps(parseResult.GetValue(props)).Where(kv => kv.Value is not null).ToDictionary(kv => kv.Key, kv => kv.Value!),
                Placement = parseResult.GetValue(region) is { } r ? Placement.InRegion(r) : Placement.Hashed,
            };
            var spawned = await tree.SpawnAsync(parentId, spec, ct);
            output.WriteLine($"{spawned.Value.Id} at {spawned.Timestamp}");
            return ExitCodes.Success;
        }));
        return cmd;
    }

    private static Command BuildSet()
    {
        var host = ClusterCli.HostOption();
        var name = TreeName();
        var path = new Argument<string>("path") { Description = "The node's path." };
        var props = new Argument<string[]>("props") { Description = "NAME=VALUE pairs (int, float or text; NAME= deletes)." };
        var session = new Option<string?>("--session") { Description = "Write as this owner session (needed for an owned node).", HelpName = "id" };
        var cmd = new Command("set", "Set properties of a node (one transaction).") { host, name, path, props, session };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var tree = SceneTree.ForClient(client, parseResult.GetValue(name)!);
            var id = await ResolveAsync(tree, parseResult.GetValue(path)!, ct);
            var ts = await tree.SetPropertiesAsync(parseResult.GetValue(session), [new NodeProperties(id, ParseProps(parseResult.GetValue(props)))], ct);
            output.WriteLine($"set at {ts}");
            return ExitCodes.Success;
        }));
        return cmd;
    }

    private static Command BuildFree()
    {
        var host = ClusterCli.HostOption();
        var name = TreeName();
        var path = new Argument<string>("path") { Description = "The node's path." };
        var cmd = new Command("free", "Free a node and its whole subtree (one transaction).") { host, name, path };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var tree = SceneTree.ForClient(client, parseResult.GetValue(name)!);
            var id = await ResolveAsync(tree, parseResult.GetValue(path)!, ct);
            if (id == SceneTree.Root)
            {
                throw CliException.Usage("the root cannot be freed");
            }

            var freed = await tree.FreeAsync(id, ct);
            output.WriteLine($"freed {freed.Value} nodes at {freed.Timestamp}");
            return ExitCodes.Success;
        }));
        return cmd;
    }

    private static Command BuildWatch()
    {
        var host = ClusterCli.HostOption();
        var name = TreeName();
        var path = new Argument<string>("path") { Description = "Root of the subtree to watch (default: the whole tree).", DefaultValueFactory = _ => "/" };
        var regions = new Option<string?>("--regions") { Description = "Watch these regions (comma-separated) instead of a subtree.", HelpName = "r1,r2" };
        var from = new Option<string?>("--from") { Description = "Resume after this resolved timestamp (wall.logical) instead of printing a snapshot.", HelpName = "ts" };
        var resolved = new Option<bool>("--resolved") { Description = "Also print every resolved timestamp (heartbeats)." };
        var cmd = new Command("watch", "Stream a subtree's (or regions') changes: a snapshot, then every committed change in commit order with its timestamp, until interrupted.")
        {
            host, name, path, regions, from, resolved,
        };
        cmd.SetAction((parseResult, ct) => ClusterCli.RunAsync(parseResult, host, ct, async (client, output) =>
        {
            var tree = SceneTree.ForClient(client, parseResult.GetValue(name)!);
            TreeInterest interest;
            if (parseResult.GetValue(regions) is { Length: > 0 } rs)
            {
                try
                {
                    interest = TreeInterest.OfRegions(rs.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                }
                catch (ArgumentException e)
                {
                    throw CliException.Usage($"--regions: {e.Message}");
                }
            }
            else
            {
                interest = TreeInterest.OfSubtree(await ResolveAsync(tree, parseResult.GetValue(path)!, ct));
            }

            CanopyTimestamp? start = null;
            if (parseResult.GetValue(from) is { } f)
            {
                start = CanopyTimestamp.TryParse(f, out var ts) ? ts : throw CliException.Usage($"--from: '{f}' is not a timestamp (wall.logical)");
            }

            var names = new Dictionary<Guid, string>();
            var showResolved = parseResult.GetValue(resolved);
            try
            {
                await foreach (var batch in tree.WatchAsync(interest, start, null, ct))
                {
                    foreach (var e in batch.Events)
                    {
                        if (e.Record is { } r)
                        {
                            names[e.Node] = r.Name;
                        }

                        var label = names.TryGetValue(e.Node, out var n) ? $"{n} {e.Node.ToString()[..8]}" : e.Node.ToString();
                        var what = e.Kind switch
                        {
                            TreeEventKind.Enter => $"{(batch.IsSnapshot ? "node " : "enter")} {label}  ({e.Record!.Type}){(e.Record.Owner is { } o ? $" owner={o}" : string.Empty)}{(e.Record.Placement.Region is { } rg ? $" region={rg}" : string.Empty)}",
                            TreeEventKind.Leave => $"leave {label}",
                            _ => $"update {label}{(e.Record is { } rr ? $"  ({rr.Type}) parent={rr.Parent.ToString()[..8]} owner={rr.Owner ?? "-"} region={rr.Placement.Region ?? "-"}" : string.Empty)}",
                        };
                        var props = string.Join(' ', e.Properties.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $".{p.Key}={Show(p.Value)}"));
                        output.WriteLine($"{e.Timestamp} {what}{(props.Length > 0 ? "  " + props : string.Empty)}");
                    }

                    if (batch.IsSnapshot)
                    {
                        output.WriteLine($"{batch.Resolved} # snapshot of {batch.Events.Count} nodes; changes follow");
                    }
                    else if (showResolved)
                    {
                        output.WriteLine($"{batch.Resolved} # resolved");
                    }

                    await output.FlushAsync(ct);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                // interrupted: done
            }

            return ExitCodes.Success;
        }));
        return cmd;
    }

    private static string Show(byte[]? v) =>
        v is null ? "(deleted)" : VariantCodec.TryDecode(v, out var value, out _) ? value.ToString() ?? string.Empty : "0x" + Convert.ToHexString(v);

    private static async Task<Guid> ResolveAsync(SceneTree tree, string path, CancellationToken ct) =>
        path.Trim('/').Length == 0 ? SceneTree.Root : await tree.ResolvePathAsync(path, ct) ?? throw new CliException($"no node at path '{path}' in tree {tree.Name}");

    private static Dictionary<string, byte[]?> ParseProps(string[]? pairs)
    {
        var result = new Dictionary<string, byte[]?>(StringComparer.Ordinal);
        foreach (var pair in pairs ?? [])
        {
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw CliException.Usage($"invalid property '{pair}': expected NAME=VALUE");
            }

            var text = pair[(eq + 1)..];
            GodotVariant value = long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var i) ? i
                : double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && text.Contains('.', StringComparison.Ordinal) ? d
                : text;
            result[pair[..eq]] = text.Length == 0 ? null : VariantCodec.Encode(value);
        }

        return result;
    }

    private static void Print(TextWriter output, TreeNode node, int depth)
    {
        var indent = new string(' ', depth * 2);
        var r = node.Record;
        var label = node.Id == SceneTree.Root ? "/" : r.Name;
        output.WriteLine($"{indent}{label}  ({r.Type}){(r.Owner is { } o ? $"  owner={o}" : string.Empty)}  {r.Id.ToString()[..8]}");
        foreach (var (k, v) in node.Properties.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            var shown = VariantCodec.TryDecode(v, out var value, out _) ? value.ToString() : "0x" + Convert.ToHexString(v);
            output.WriteLine($"{indent}  .{k} = {shown}");
        }

        foreach (var c in node.Children)
        {
            Print(output, c, depth + 1);
        }
    }
}
