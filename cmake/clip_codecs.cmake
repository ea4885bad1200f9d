# The libraries the torch-free part of native/core needs: the image codecs,
# zlib, ICU (tokenizer) and nlohmann_json (manifest). Included by the addon's
# CMakeLists.txt and by native/fuzz's.
find_package(PkgConfig REQUIRED)
find_package(JPEG REQUIRED)
find_package(PNG REQUIRED)
find_package(GIF REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
pkg_check_modules(WEBP REQUIRED IMPORTED_TARGET libwebp libwebpdemux)
pkg_check_modules(ICU REQUIRED IMPORTED_TARGET icu-uc icu-i18n)
