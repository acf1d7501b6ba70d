namespace Canopy.Server;

using System.Text.Json;
using Canopy.Ranges;
using Canopy.Storage;

/// <summary>
/// What a server knows of its cluster, persisted in its own store (server-local key 0x01 'n' "meta"):
/// its node id, every member's addresses, and — once initialised — the cluster id and the initial range layout.
/// Node ids are the 1-based positions of the servers' --listen-addr in the --join list (the same list on every
/// initial server), so a server knows its id and its peers before the cluster is initialised.
/// </summary>
public sealed record ClusterMeta
{
    private static readonly byte[] Key = [0x01, (byte)'n', (byte)'m', (byte)'e', (byte)'t', (byte)'a'];

    public required ulong NodeId { get; init; }

    /// <summary>Member node id → its --listen-addr as given.</summary>
    public required Dictionary<ulong, string> Members { get; init; }

    public Guid ClusterId { get; init; }

    public bool Initialized { get; init; }

    /// <summary>The ranges created at initialisation (the layout is static until ranges split and move).</summary>
    public List<RangeLayout> Ranges { get; init; } = [];

    public sealed record RangeLayout(ulong RangeId, string StartKeyHex, string? EndKeyHex, ulong[] Replicas)
    {
        public RangeDescriptor ToDescriptor() =>
            new(RangeId, Convert.FromHexString(StartKeyHex), EndKeyHex is null ? null : Convert.FromHexString(EndKeyHex), Replicas);

        public static RangeLayout From(RangeDescriptor d) =>
            new(d.RangeId, Convert.ToHexString(d.StartKey), d.EndKey is null ? null : Convert.ToHexString(d.EndKey), d.Replicas);
    }

    public static ClusterMeta? Load(IStorageEngine engine) =>
        engine.Get(Key) is { } b ? JsonSerializer.Deserialize<ClusterMeta>(b) : null;

    public void Save(IStorageEngine engine) =>
        engine.Write(new WriteBatch().Put(Key, JsonSerializer.SerializeToUtf8Bytes(this)), sync: true);
}
