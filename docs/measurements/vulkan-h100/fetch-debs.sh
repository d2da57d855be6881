#!/bin/bash
# Run on a Debian bookworm machine with network (this one): downloads the .deb
# files the H100 machine needs for a Vulkan build and run into .gl/ at the
# repository root, which the lead carries to the device (it has NVIDIA's Vulkan
# driver but no Vulkan loader, no glslc, no Vulkan or SPIR-V headers).
#   loader + headers:  libvulkan1 libvulkan-dev
#   shader compiler:   glslc libshaderc1
#   SPIR-V headers:    spirv-headers
#   vulkaninfo:        vulkan-tools and its libraries (tqpatch finds devices with it)
set -euo pipefail
cd "$(dirname "$0")/../../.."
mkdir -p .gl && cd .gl
apt-get download glslc libshaderc1 libvulkan1 libvulkan-dev spirv-headers \
    vulkan-tools libwayland-client0 libffi8 libx11-6 libx11-data libxcb1 libxau6 libxdmcp6 libbsd0 libmd0
ls -la
