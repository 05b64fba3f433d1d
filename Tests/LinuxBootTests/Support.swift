import Foundation
import GuestMemory
import Testing
@testable import LinuxBoot

/// Debian's cloud kernel as `apt-get install linux-image-cloud-amd64` puts
/// it (scripts/test installs it). Tests that need it fail when it is
/// missing, saying how to get it: a skip would hide that the loader went untested.
enum InstalledKernel {
    struct Missing: Error, CustomStringConvertible {
        var description: String {
            DebianCloudKernel.installHint
        }
    }

    static func path() throws -> String {
        guard let path = DebianCloudKernel.installedPath() else { throw Missing() }
        return path
    }

    static func bytes() throws -> [UInt8] {
        let path = try path()
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Missing()
        }
        return Array(data)
    }
}

/// 128 MiB: enough for the cloud kernel's init_size above 16 MiB and an initrd.
let machineMemory = 128 << 20

func littleEndian<T: FixedWidthInteger>(_ type: T.Type, _ bytes: [UInt8], at offset: Int) -> T {
    bytes.le(T.self, at: offset)
}

/// A minimal ELF64 header and program headers, for loader tests.
func makeELF(class elfClass: UInt8 = 2, machine: UInt16 = 62, type: UInt16 = 2, entry: UInt64 = 0x100_0000,
             segments: [(paddr: UInt64, data: [UInt8], memsz: UInt64)] = []) -> [UInt8] {
    let headerSize = 64, phentsize = 56
    var bytes = [UInt8](repeating: 0, count: headerSize + phentsize * segments.count)
    bytes.replaceSubrange(0..<4, with: [0x7f, 0x45, 0x4c, 0x46])
    bytes[4] = elfClass
    bytes[5] = 1
    bytes[6] = 1
    bytes.setLE(type, at: 16)
    bytes.setLE(machine, at: 18)
    bytes.setLE(UInt32(1), at: 20)
    bytes.setLE(entry, at: 24)
    bytes.setLE(UInt64(headerSize), at: 32)
    bytes.setLE(UInt16(headerSize), at: 52)
    bytes.setLE(UInt16(phentsize), at: 54)
    bytes.setLE(UInt16(segments.count), at: 56)
    for (index, segment) in segments.enumerated() {
        let base = headerSize + index * phentsize
        bytes.setLE(UInt32(1), at: base)
        bytes.setLE(UInt64(bytes.count), at: base + 8)
        bytes.setLE(segment.paddr, at: base + 16)
        bytes.setLE(segment.paddr, at: base + 24)
        bytes.setLE(UInt64(segment.data.count), at: base + 32)
        bytes.setLE(segment.memsz, at: base + 40)
        bytes += segment.data
    }
    return bytes
}
