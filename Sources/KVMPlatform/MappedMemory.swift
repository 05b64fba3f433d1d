import Glibc
import SystemPackage

/// Memory obtained from `mmap(2)` and released with `munmap(2)` exactly once,
/// when the last reference goes.
///
/// It is `@unchecked Sendable` because it only hands out its address: what
/// is stored there, and who may write it when, is for its owner to say.
public final class MappedMemory: @unchecked Sendable {
    /// The start of the mapping.
    public let base: UnsafeMutableRawPointer
    /// The length of the mapping in bytes.
    public let size: Int

    /// Maps `size` bytes of zeroed anonymous shared memory, read-write.
    /// `size` is rounded up to whole pages by the kernel.
    public init(anonymousSize size: Int) throws(Errno) {
        guard size > 0 else { throw Errno.invalidArgument }
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let address, address != MAP_FAILED else { throw Errno(rawValue: errno) }
        base = address
        self.size = size
    }

    /// Maps `size` bytes of the file or device `descriptor` at `offset`, shared, read-write.
    public init(descriptor: Int32, size: Int, offset: Int = 0) throws(Errno) {
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, off_t(offset))
        guard let address, address != MAP_FAILED else { throw Errno(rawValue: errno) }
        base = address
        self.size = size
    }

    /// Takes ownership of a mapping made elsewhere; it will be unmapped here.
    public init(adopting base: UnsafeMutableRawPointer, size: Int) {
        self.base = base
        self.size = size
    }

    deinit { munmap(base, size) }
}
