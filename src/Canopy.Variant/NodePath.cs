using System.Collections.Immutable;
using System.Text;

namespace Canopy.Variant;

/// <summary>
/// Godot <c>NodePath</c>: node names separated by <c>/</c>, then optional subnames (properties, sub-resources)
/// after <c>:</c>, e.g. <c>/root/Main/Player:position:x</c> has names root, Main, Player and subnames position, x.
/// Immutable; equal when both name lists, both subname lists and the absolute flag are equal.
/// </summary>
public sealed class NodePath : IEquatable<NodePath>
{
    public static readonly NodePath Empty = new([], [], false);

    public NodePath(IEnumerable<string> names, IEnumerable<string> subNames, bool isAbsolute)
    {
        ArgumentNullException.ThrowIfNull(names);
        ArgumentNullException.ThrowIfNull(subNames);
        Names = [.. names];
        SubNames = [.. subNames];
        IsAbsolute = isAbsolute;
        foreach (var n in Names)
        {
            ArgumentNullException.ThrowIfNull(n, nameof(names));
        }

        foreach (var n in SubNames)
        {
            ArgumentNullException.ThrowIfNull(n, nameof(subNames));
        }
    }

    internal NodePath(ImmutableArray<string> names, ImmutableArray<string> subNames, bool isAbsolute, bool trusted)
    {
        _ = trusted;
        Names = names;
        SubNames = subNames;
        IsAbsolute = isAbsolute;
    }

    public ImmutableArray<string> Names { get; }

    public ImmutableArray<string> SubNames { get; }

    public bool IsAbsolute { get; }

    public bool IsEmpty => Names.IsEmpty && SubNames.IsEmpty;

    /// <summary>
    /// Parses a path the way Godot's <c>NodePath(String)</c> does: a leading <c>/</c> makes it absolute, empty
    /// segments between slashes are skipped, everything after the first <c>:</c> is subnames (a trailing <c>:</c> is
    /// allowed, an empty subname elsewhere is not).
    /// </summary>
    public static NodePath Parse(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (path.Length == 0)
        {
            return Empty;
        }

        var absolute = path[0] == '/';
        var subNames = new List<string>();
        var namePart = path;
        var colon = path.IndexOf(':', StringComparison.Ordinal);
        if (colon >= 0)
        {
            var parts = path[(colon + 1)..].Split(':');
            for (var i = 0; i < parts.Length; i++)
            {
                if (parts[i].Length == 0)
                {
                    if (i == parts.Length - 1)
                    {
                        continue;
                    }

                    throw new FormatException($"Invalid NodePath '{path}': empty subname.");
                }

                subNames.Add(parts[i]);
            }

            namePart = path[..colon];
        }

        var names = namePart.Split('/', StringSplitOptions.RemoveEmptyEntries);
        return new NodePath(names, subNames, absolute);
    }

    public bool Equals(NodePath? other) =>
        other is not null
        && IsAbsolute == other.IsAbsolute
        && Names.AsSpan().SequenceEqual(other.Names.AsSpan())
        && SubNames.AsSpan().SequenceEqual(other.SubNames.AsSpan());

    public override bool Equals(object? obj) => Equals(obj as NodePath);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(IsAbsolute);
        foreach (var n in Names)
        {
            h.Add(n, StringComparer.Ordinal);
        }

        h.Add(-1);
        foreach (var n in SubNames)
        {
            h.Add(n, StringComparer.Ordinal);
        }

        return h.ToHashCode();
    }

    /// <summary>The path as Godot prints it: <c>/</c> prefix when absolute, names joined by <c>/</c>, then <c>:subname</c> each.</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        if (IsAbsolute)
        {
            sb.Append('/');
        }

        sb.AppendJoin('/', Names);
        foreach (var s in SubNames)
        {
            sb.Append(':').Append(s);
        }

        return sb.ToString();
    }
}
