// Tree ops of the gateway (docs/protocol.md, "Scene tree"): each one SceneTree operation, i.e. one serializable
// transaction on this server's coordinator, retried after retryable aborts (GatewayTreeTxn.Runner).
namespace Canopy.Gateway;

using Canopy.Rpc;
using Canopy.Tree;
using Canopy.Variant;

/// <summary>Runs the tree_* / session_* / own_* ops; every outcome becomes a result or a typed error message.</summary>
internal static class GatewayTreeOps
{
    public static bool IsTreeOp(string op) =>
        op is "tree_spawn" or "tree_set" or "tree_set_many" or "tree_move" or "tree_read" or "tree_free" or "session_open" or "session_renew" or "own_take" or "own_release" or "own_handoff";

    /// <summary>The answer to tree op <paramref name="op"/>; never throws for a refusal (only for bugs and shutdown).</summary>
    public static async Task<VariantDictionary> RunAsync(string op, Fields f, GodotVariant id, TreeTxnRunner runner, VariantDecodeOptions decode, CancellationToken ct)
    {
        try
        {
            var treeName = Require(f, f.String("tree", true));
            var tree = new SceneTree(treeName, runner);
            switch (op)
            {
                case "tree_spawn":
                {
                    var parent = Require(f, f.String("parent", true));
                    var name = Require(f, f.String("name", true));
                    var type = Require(f, f.String("type", true));
                    var region = f.String("region", false);
                    var props = Props(f, "props", false) ?? [];
                    Check(f);
                    var spec = new NodeSpec(name, type.StartsWith("res://", StringComparison.Ordinal) ? NodeKind.Scene : NodeKind.Class, type)
                    {
                        Id = Guid.NewGuid(), // fixed across retries
                        Placement = region is null ? Placement.Hashed : Placement.InRegion(region),
                        Properties = props.ToDictionary(p => p.Key, p => p.Value ?? VariantCodec.Encode(GodotVariant.Nil)),
                    };
                    var r = await tree.RunAsync(async t => await t.SpawnAsync(await ResolveAsync(t, parent).ConfigureAwait(false), spec).ConfigureAwait(false), ct).ConfigureAwait(false);
                    // "node", not "id": the envelope's "id" is the request's.
                    return GatewayProtocol.Result(id, ("node", r.Value.Id.ToString()), ("ts", r.Timestamp ?? string.Empty));
                }

                case "tree_set":
                {
                    var session = f.String("session", false);
                    var node = Require(f, f.String("node", true));
                    var props = Props(f, "props", true)!;
                    Check(f);
                    var ts = await tree.RunAsync(async t =>
                        await t.SetPropertiesAsync(session, [new NodeProperties(await ResolveAsync(t, node).ConfigureAwait(false), props)]).ConfigureAwait(false), ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("ts", ts ?? string.Empty));
                }

                case "tree_set_many":
                {
                    // One transaction for many nodes: a synchronizer's changed properties of every owned node per tick.
                    var session = f.String("session", false);
                    var nodes = f.Raw("nodes") switch
                    {
                        VariantDictionary d => d,
                        null => throw new ArgumentException("'nodes' (a Dictionary node UUID → props Dictionary) is required"),
                        _ => throw new ArgumentException("'nodes' must be a Dictionary node UUID → props Dictionary"),
                    };
                    var hints = f.Raw("regions") as VariantDictionary;
                    Check(f);
                    if (nodes.Count > 10_000)
                    {
                        throw new ArgumentException("at most 10,000 nodes per tree_set_many");
                    }

                    var batch = new List<NodeProperties>(nodes.Count);
                    foreach (var (k, v) in nodes.Entries)
                    {
                        var text = k switch { VariantString s => s.Value, VariantStringName s => s.Value, _ => throw new ArgumentException("'nodes' keys are node UUIDs (Strings)") };
                        if (!Guid.TryParse(text, out var nodeId))
                        {
                            throw new ArgumentException($"'nodes' keys are node UUIDs, not '{text}'");
                        }

                        var props = PropsOf(v as VariantDictionary ?? throw new ArgumentException($"'nodes' values are Dictionaries (the props of {text})"), "nodes");
                        Placement? hint = null;
                        if (hints is not null && hints.TryGetValue(text, out var h))
                        {
                            hint = h switch
                            {
                                VariantNil => Placement.Hashed,
                                VariantString rs => Placement.InRegion(rs.Value),
                                VariantStringName rs => Placement.InRegion(rs.Value),
                                _ => throw new ArgumentException("'regions' values are region Strings or nil (hash placement)"),
                            };
                        }

                        batch.Add(new NodeProperties(nodeId, props) { PlacementHint = hint });
                    }

                    var ts = await tree.RunAsync(async t => await t.SetPropertiesAsync(session, batch).ConfigureAwait(false), ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("ts", ts ?? string.Empty), ("count", batch.Count));
                }

                case "tree_move":
                {
                    // Re-keys the node (and with subtree, its descendants) into a region, or back to hash placement
                    // (region nil/absent): one transaction, so a subscriber of both places sees it in exactly one.
                    var node = Require(f, f.String("node", true));
                    var region = f.String("region", false);
                    var subtree = f.Raw("subtree") switch
                    {
                        null => false,
                        VariantBool b => b.Value,
                        _ => throw new ArgumentException("'subtree' must be a bool"),
                    };
                    Check(f);
                    var placement = region is null ? Placement.Hashed : Placement.InRegion(region);
                    var r = await tree.RunAsync(async t => await t.MoveAsync(await ResolveAsync(t, node).ConfigureAwait(false), placement, subtree).ConfigureAwait(false), ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("moved", r.Value), ("ts", r.Timestamp ?? string.Empty));
                }

                case "tree_read":
                {
                    var node = Require(f, f.String("node", true));
                    var depth = f.Int("depth", false);
                    Check(f);
                    if (depth < 0)
                    {
                        throw new ArgumentException("'depth' must not be negative");
                    }

                    var maxDepth = depth is null or > int.MaxValue ? int.MaxValue : (int)depth.Value;
                    var r = await tree.RunAsync(async t => await t.ReadSubtreeAsync(await ResolveAsync(t, node).ConfigureAwait(false), maxDepth).ConfigureAwait(false), ct).ConfigureAwait(false);
                    var nodes = r.Value.SelfAndDescendants().Select(n => (GodotVariant)NodeToVariant(n, decode));
                    return GatewayProtocol.Result(id, ("ts", r.Timestamp ?? string.Empty), ("nodes", new VariantArray(nodes)));
                }

                case "tree_free":
                {
                    var node = Require(f, f.String("node", true));
                    Check(f);
                    var r = await tree.RunAsync(async t => await t.FreeAsync(await ResolveAsync(t, node).ConfigureAwait(false)).ConfigureAwait(false), ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("freed", r.Value), ("ts", r.Timestamp ?? string.Empty));
                }

                case "session_open" or "session_renew":
                {
                    var session = Require(f, f.String("session", true));
                    var leaseMs = f.Int("lease_ms", false);
                    Check(f);
                    if (leaseMs is <= 0 or > 24L * 3600 * 1000)
                    {
                        throw new ArgumentException("'lease_ms' must be 1 to 86400000");
                    }

                    TimeSpan? lease = leaseMs is null ? null : TimeSpan.FromMilliseconds(leaseMs.Value);
                    var r = await tree.RunAsync(t => op == "session_open" || lease is not null ? t.OpenSessionAsync(session, lease) : t.RenewSessionAsync(session), ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("ts", r.Timestamp ?? string.Empty), ("expires_at_ms", r.Value.ExpiresAtNanos / 1_000_000), ("lease_ms", (long)r.Value.Lease.TotalMilliseconds));
                }

                case "own_take" or "own_release":
                {
                    var session = Require(f, f.String("session", true));
                    var nodes = f.Raw("nodes") switch
                    {
                        VariantArray a => a.Items.Select(n => n is VariantString s ? s.Value : n is VariantStringName sn ? sn.Value : throw new ArgumentException("'nodes' holds Strings (paths or UUIDs)")).ToList(),
                        null => throw new ArgumentException("'nodes' (an Array) is required"),
                        _ => throw new ArgumentException("'nodes' must be an Array"),
                    };
                    Check(f);
                    var ts = await tree.RunAsync(
                        async t =>
                        {
                            var ids = new List<Guid>(nodes.Count);
                            foreach (var n in nodes)
                            {
                                ids.Add(await ResolveAsync(t, n).ConfigureAwait(false));
                            }

                            if (op == "own_take")
                            {
                                await t.TakeOwnershipAsync(session, ids).ConfigureAwait(false);
                            }
                            else
                            {
                                await t.ReleaseOwnershipAsync(session, ids).ConfigureAwait(false);
                            }
                        },
                        ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("ts", ts ?? string.Empty));
                }

                default: // own_handoff
                {
                    var from = Require(f, f.String("from", true));
                    var to = Require(f, f.String("to", true));
                    var node = Require(f, f.String("node", true));
                    var props = Props(f, "props", false);
                    Check(f);
                    var ts = await tree.RunAsync(async t => await t.HandoffAsync(from, to, await ResolveAsync(t, node).ConfigureAwait(false), props).ConfigureAwait(false), ct).ConfigureAwait(false);
                    return GatewayProtocol.Result(id, ("ts", ts ?? string.Empty));
                }
            }
        }
        catch (NotOwnerException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.NotOwner, e.Message, ("node", e.Node.ToString()), ("owner", e.Owner is null ? GodotVariant.Nil : e.Owner));
        }
        catch (OwnershipHeldException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.NotOwner, e.Message, ("node", e.Node.ToString()), ("owner", e.Owner), ("expires_at_ms", e.ExpiresAt.ToUnixTimeMilliseconds()));
        }
        catch (NameConflictException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.NameTaken, e.Message, ("parent", e.Parent.ToString()), ("name", e.Name), ("existing", e.Existing.ToString()));
        }
        catch (NodeNotFoundException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.NotFound, e.Message, ("node", e.Node.ToString()));
        }
        catch (PathNotFoundException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.NotFound, e.Message, ("node", e.Path));
        }
        catch (SessionNotFoundException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.NotFound, e.Message, ("session", e.Session));
        }
        catch (TreeTransactionException e)
        {
            return GatewayProtocol.Error(id, e.Ambiguous ? GatewayProtocol.Codes.Ambiguous : e.Result.Retryable ? GatewayProtocol.Codes.TxnAborted : GatewayProtocol.Codes.BadRequest, e.Message);
        }
        catch (Exception e) when (e is TreeException or ArgumentException)
        {
            // cycles, the root, expired sessions, a taken UUID, invalid names/regions/sessions, malformed fields
            return GatewayProtocol.Error(id, GatewayProtocol.Codes.BadRequest, $"{op}: {e.Message}");
        }
        catch (GatewayRpcException e)
        {
            return GatewayProtocol.Error(id, GatewayProtocol.CodeOf(e.Error.Code), e.Error.Message);
        }
    }

    private static T Require<T>(Fields f, T? value)
        where T : class
    {
        Check(f);
        return value!;
    }

    private static void Check(Fields f)
    {
        if (f.Problem is not null)
        {
            throw new ArgumentException(f.Problem);
        }
    }

    /// <summary>A node reference: a UUID string, or a path from the root ("/a/b", "a/b"; "/" is the root).</summary>
    internal static async Task<Guid> ResolveAsync(TreeTransaction t, string node) =>
        Guid.TryParse(node, out var uuid) ? uuid : await t.ResolvePathAsync(node).ConfigureAwait(false) ?? throw new PathNotFoundException(node);

    /// <summary>props: Dictionary name → any Variant, each stored as its encoding; nil deletes (tree_set, own_handoff).</summary>
    private static Dictionary<string, byte[]?>? Props(Fields f, string field, bool required)
    {
        switch (f.Raw(field))
        {
            case null when required:
                throw new ArgumentException($"'{field}' (a Dictionary) is required");
            case null:
                return null;
            case VariantDictionary d:
                return PropsOf(d, field);
            default:
                throw new ArgumentException($"'{field}' must be a Dictionary");
        }
    }

    private static Dictionary<string, byte[]?> PropsOf(VariantDictionary d, string field)
    {
        var props = new Dictionary<string, byte[]?>(d.Count, StringComparer.Ordinal);
        foreach (var (k, v) in d.Entries)
        {
            var name = k switch
            {
                VariantString s => s.Value,
                VariantStringName s => s.Value,
                _ => throw new ArgumentException($"'{field}' keys must be Strings"),
            };
            props[name] = v is VariantNil ? null : VariantCodec.Encode(v);
        }

        return props;
    }

    private static VariantDictionary NodeToVariant(TreeNode n, VariantDecodeOptions decode) => RecordToVariant(n.Record, n.Properties, decode);

    /// <summary>A node as tree_read and subscription snapshots show it (props decoded from their Variant bytes).</summary>
    internal static VariantDictionary RecordToVariant(NodeRecord r, IEnumerable<KeyValuePair<string, byte[]>> properties, VariantDecodeOptions decode)
    {
        var props = properties
            .OrderBy(p => p.Key, StringComparer.Ordinal)
            .Select(p => new KeyValuePair<GodotVariant, GodotVariant>(p.Key, PropValue(p.Value, decode)));
        return new VariantDictionary(
            ("id", r.Id.ToString()),
            ("parent", r.Parent.ToString()),
            ("name", r.Name),
            ("type", r.Type),
            ("kind", r.Kind == NodeKind.Scene ? "scene" : "class"),
            ("owner", r.Owner is null ? GodotVariant.Nil : r.Owner),
            ("region", r.Placement.Region is null ? GodotVariant.Nil : r.Placement.Region),
            ("props", new VariantDictionary(props)));
    }

    /// <summary>A stored property value as a client sees it: the Variant it encodes, or the raw bytes.</summary>
    internal static GodotVariant PropValue(byte[] value, VariantDecodeOptions decode) =>
        VariantCodec.TryDecode(value, out var v, out _, decode) ? v : new PackedByteArray(value);

    internal sealed class PathNotFoundException(string path) : Exception($"no node at path '{path}'")
    {
        public string Path { get; } = path;
    }
}
